package memstore_test

import (
	"sync"
	"testing"

	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/memstore"
	"github.com/credmatrix/credmatrix/services/audit/storetest"
)

func TestConformance(t *testing.T) {
	var mu sync.Mutex
	stores := map[string]*memstore.Store{} // dir -> first store opened there
	storetest.Run(t, func(t *testing.T, dir string) audit.Store {
		mu.Lock()
		defer mu.Unlock()
		if s, ok := stores[dir]; ok {
			return s.Reopen()
		}
		s := memstore.New()
		stores[dir] = s
		return s
	})
}
