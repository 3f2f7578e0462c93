package tiles

import (
	"container/list"
	"sync"
)

// lru is a fixed-size cache of full (immutable) tiles, so that repeated
// proofs near each other do not read the same tiles again. Its size bounds
// the tree's memory: n tiles of FullBytes each.
type lru struct {
	mu    sync.Mutex
	max   int
	order *list.List // front: most recent; values are *entry
	byID  map[ID]*list.Element
}

type entry struct {
	id     ID
	hashes []byte
}

func newLRU(max int) *lru {
	return &lru{max: max, order: list.New(), byID: make(map[ID]*list.Element)}
}

func (c *lru) get(id ID) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byID[id]; ok {
		c.order.MoveToFront(el)
		return el.Value.(*entry).hashes
	}
	return nil
}

func (c *lru) put(id ID, hashes []byte) {
	if c.max <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byID[id]; ok {
		c.order.MoveToFront(el)
		return
	}
	c.byID[id] = c.order.PushFront(&entry{id: id, hashes: hashes})
	for c.order.Len() > c.max {
		el := c.order.Back()
		c.order.Remove(el)
		delete(c.byID, el.Value.(*entry).id)
	}
}
