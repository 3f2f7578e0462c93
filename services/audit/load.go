package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"
	"github.com/credmatrix/credmatrix/services/audit/tiles"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"

	"github.com/credmatrix/credmatrix/platform/domainerr"
)

// maxFindings bounds the findings a check keeps in detail (it counts the
// rest), so a wholesale edit of the store cannot exhaust memory.
const maxFindings = 20

// Finding is one thing wrong with a store, at a sequence.
type Finding struct {
	// Sequence is the first sequence it concerns.
	Sequence uint64
	// What says what is wrong.
	What string
	// Adoptable says an operator may accept it (WithAdoption): the events
	// are intact, only something derived is wrong or missing (a column, an
	// index row, the signature of events that were never signed).
	Adoptable bool
	// Span says the finding covers a range that a precise finding (a
	// row that does not decode, or is missing) may explain.
	Span bool
}

func (f Finding) String() string { return fmt.Sprintf("sequence %d: %s", f.Sequence, f.What) }

// findings collects what a check found, the first maxFindings in detail.
type findings struct {
	list  []Finding
	total int
	fatal int
}

func (fs *findings) add(f Finding) {
	fs.total++
	if !f.Adoptable {
		fs.fatal++
	}
	if len(fs.list) < maxFindings || !f.Adoptable && fs.fatal == 1 {
		fs.list = append(fs.list, f)
	}
}

// first returns the finding to name: one no adoption covers before an
// adoptable one, a precise one before a range it may explain, then the
// earliest.
func (fs *findings) first() Finding {
	rank := func(f Finding) int {
		r := 0
		if f.Adoptable {
			r += 2
		}
		if f.Span {
			r++
		}
		return r
	}
	best := -1
	for i, f := range fs.list {
		if best < 0 || rank(f) < rank(fs.list[best]) || rank(f) == rank(fs.list[best]) && f.Sequence < fs.list[best].Sequence {
			best = i
		}
	}
	return fs.list[best]
}

// scan is what one pass over the store found.
type scan struct {
	head     uint64
	st       *tiles.Staged // the log's tree extended with the rows read
	latest   *StoredCheckpoint
	indexed  uint64
	repair   []Row  // rows whose key columns disagree with their leaves
	indexBad uint64 // first index row that disagrees or is missing (head: none)
	fs       findings
	// tiles the rows complete that the store lacks (a store written
	// before tiles existed) or holds different (damaged): rebuilt from the
	// events, written back (damaged ones only on adoption).
	badTiles     []tiles.Tile
	tilesWritten int
	// pruneEnd is the largest end of a prune the log's own events read
	// record (ActionPrune): a store whose pruned state goes beyond it was
	// pruned behind the log's back.
	pruneEnd uint64
}

// scanStore reads, in one snapshot, every row from the tree's head on,
// the latest checkpoint and the index watermark, and checks them: rows
// at their positions, leaves decoding, columns equal to what the leaf
// derives, the latest checkpoint signed by the log's key and matching the
// tree, and every event signed.
//
// The rows extend a stage of the log's Merkle tree (sc.st), and every full
// tile they complete is compared with the stored one; missing tiles (a
// store from before tiles, or a writer that lost them) are written back
// as the scan goes, so memory does not grow with the rows read.
func (l *Log) scanStore(ctx context.Context, sc *scan) error {
	from := l.tree.Size()
	return l.store.View(ctx, func(r Reader) error {
		*sc = scan{head: from, st: l.tree.Stage(nil)}
		var err error
		if sc.indexed, err = r.IndexedUpTo(ctx); err != nil {
			return fmt.Errorf("read index watermark: %w", err)
		}
		cp, ok, err := r.LatestCheckpoint(ctx)
		if err != nil {
			return fmt.Errorf("read latest checkpoint: %w", err)
		}
		if ok {
			sc.latest = &cp
		}
		sc.indexBad = ^uint64(0)
		next := from
		hashes := make([]tiles.Hash, 0, loadBatch)
		for {
			rows, err := r.ReadRows(ctx, next, loadBatch)
			if err != nil {
				return fmt.Errorf("read audit store from %d: %w", next, err)
			}
			hashes = hashes[:0]
			gap := false
			for _, row := range rows {
				if row.Sequence != next {
					if row.Sequence > next {
						sc.fs.add(Finding{Sequence: next, What: fmt.Sprintf("events %d to %d are missing (deleted)", next, row.Sequence-1)})
					} else {
						sc.fs.add(Finding{Sequence: next, What: fmt.Sprintf("a row holds sequence %d again after %d", row.Sequence, next-1)})
					}
					gap = true // the tree cannot go on past a gap
					break
				}
				hashes = append(hashes, leaf.Hash(row.Data))
				l.checkColumns(row, sc)
				next++
			}
			sc.st.Extend(hashes)
			sc.head = next
			if err := l.checkTiles(ctx, r, sc); err != nil {
				return err
			}
			if gap || len(rows) < loadBatch {
				break
			}
		}
		return nil
	})
}

// checkTiles compares the full tiles the scanned rows completed with the
// stored ones. Missing tiles are written back at once (they are derived
// from the events; a store from before tiles gets them this way);
// damaged ones are a finding an operator adopts (then rewritten).
func (l *Log) checkTiles(ctx context.Context, r Reader, sc *scan) error {
	ts := sc.st.TakeTiles()
	if len(ts) == 0 {
		return nil
	}
	ids := make([]tiles.ID, len(ts))
	for i, t := range ts {
		ids[i] = t.ID
	}
	stored, err := r.ReadTiles(ctx, ids)
	if err != nil {
		return fmt.Errorf("read tiles: %w", err)
	}
	var missing []tiles.Tile
	for i, t := range ts {
		switch {
		case stored[i] == nil:
			missing = append(missing, t)
		case !bytes.Equal(stored[i], t.Hashes):
			first := t.ID.Index << (t.ID.Level * tiles.Height) * tiles.Width
			sc.fs.add(Finding{Sequence: first, What: fmt.Sprintf("stored Merkle tree %s disagrees with the events it is derived from", t.ID), Adoptable: true})
			if len(sc.badTiles) < maxFindings {
				sc.badTiles = append(sc.badTiles, t)
			}
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if err := l.store.AddTiles(ctx, missing); err != nil {
		if errors.Is(err, errNotWriter) {
			return nil // a replica: the writer rebuilds them
		}
		return fmt.Errorf("write rebuilt tiles: %w", err)
	}
	sc.tilesWritten += len(missing)
	return nil
}

// checkColumns compares a row's columns with its leaf.
func (l *Log) checkColumns(row Row, sc *scan) {
	e, bad, err := CheckRow(row)
	if err != nil {
		sc.fs.add(Finding{Sequence: row.Sequence, What: "the stored event does not decode: " + err.Error()})
		return
	}
	var key, index []string
	for _, c := range bad {
		if strings.HasPrefix(c, "index") {
			index = append(index, c)
		} else {
			key = append(key, c)
		}
	}
	if a := e.GetAdmin(); a != nil && a.GetAction() == ActionPrune && e.GetSourceService() == SourceAudit && e.GetKind() == auditv1.Kind_KIND_AUDIT_ADMIN {
		var first, end uint64
		if _, err := fmt.Sscanf(e.GetId(), "audit-prune-%d-%d-", &first, &end); err == nil {
			sc.pruneEnd = max(sc.pruneEnd, end)
		}
	}
	if slices.Contains(key, "sequence") {
		// The leaf names another position: not a column to repair.
		sc.fs.add(Finding{Sequence: row.Sequence, What: "the stored event holds another sequence (moved or swapped)"})
		return
	}
	if row.Index == nil && row.Sequence < sc.indexed {
		index = append(index, "index row missing")
	}
	if len(key) > 0 {
		sc.fs.add(Finding{Sequence: row.Sequence, What: "columns " + strings.Join(key, ", ") + " disagree with the event", Adoptable: true})
		// Repair sets the columns to what the leaf derives.
		sc.repair = append(sc.repair, Row{Sequence: row.Sequence, Key: KeyOf(e)})
	}
	if len(index) > 0 {
		sc.fs.add(Finding{Sequence: row.Sequence, What: "query index: " + strings.Join(index, ", ") + " disagree with the event", Adoptable: true})
		sc.indexBad = min(sc.indexBad, row.Sequence)
	}
}

// checkTrust checks the scanned tree (the log's tree extended by
// sc.hashes, whose compact range is cr) against the store's latest
// checkpoint and the kept one (nil: none).
func (l *Log) checkTrust(sc *scan, root func(size uint64) ([]byte, error), kept *checkpoint.Checkpoint) error {
	if l.signer == nil {
		return nil
	}
	v := l.signer.Verifier()
	if cp := sc.latest; cp != nil {
		c, err := v.Open(cp.Note)
		switch {
		case err != nil:
			sc.fs.add(Finding{Sequence: cp.Size, What: fmt.Sprintf("the latest checkpoint (tree size %d) is not signed by key %s for origin %s: %v", cp.Size, l.signer.KeyID(), l.signer.Origin(), err)})
		case c.Size != cp.Size:
			sc.fs.add(Finding{Sequence: cp.Size, What: fmt.Sprintf("the checkpoint stored for tree size %d signs size %d", cp.Size, c.Size)})
		case c.Size > sc.head:
			sc.fs.add(Finding{Sequence: sc.head, What: fmt.Sprintf("the latest signed checkpoint commits to %d events but the store holds %d: events %d to %d are missing (truncated)", c.Size, sc.head, sc.head, c.Size-1)})
		default:
			r, err := root(c.Size)
			if err != nil {
				return err
			}
			if !bytes.Equal(r, c.Root) {
				sc.fs.add(Finding{Sequence: 0, Span: true, What: fmt.Sprintf("the first %d events do not hash to the latest signed checkpoint's root: an event below sequence %d was modified, removed or reordered ('audit verify --db' pinpoints its commit batch)", c.Size, c.Size)})
			} else if c.Size < sc.head {
				sc.fs.add(Finding{Sequence: c.Size, What: fmt.Sprintf("events %d to %d are signed by no checkpoint (the log signs every commit batch: they were written behind its back, or by a writer that crashed before signing)", c.Size, sc.head-1), Adoptable: true})
			}
		}
	} else if sc.head > 0 {
		sc.fs.add(Finding{Sequence: 0, What: fmt.Sprintf("the store holds %d events and no signed checkpoint: nothing proves them", sc.head), Adoptable: true})
	}
	if kept == nil {
		return nil
	}
	if kept.Size > sc.head {
		sc.fs.add(Finding{Sequence: sc.head, What: fmt.Sprintf("the kept checkpoint commits to %d events but the store holds %d: the store was rolled back, truncated or replaced (events %d to %d are gone)", kept.Size, sc.head, sc.head, kept.Size-1)})
		return nil
	}
	r, err := root(kept.Size)
	if err != nil {
		return err
	}
	if bytes.Equal(r, kept.Root) {
		return nil
	}
	if cp := sc.latest; cp != nil {
		if c, err := v.Open(cp.Note); err == nil && c.Size == kept.Size && !bytes.Equal(c.Root, kept.Root) {
			sc.fs.add(Finding{Sequence: kept.Size, What: fmt.Sprintf("fork: the kept checkpoint and the store's checkpoint both sign tree size %d with different roots (kept %s, store %s)", kept.Size,
				base64.StdEncoding.EncodeToString(kept.Root), base64.StdEncoding.EncodeToString(c.Root))})
			return nil
		}
	}
	sc.fs.add(Finding{Sequence: 0, Span: true, What: fmt.Sprintf("the first %d events do not hash to the kept checkpoint's root: the store was rewritten below sequence %d", kept.Size, kept.Size)})
	return nil
}

// refusal is the error of a store that fails its check. When every
// finding is adoptable it names the adoption token.
func (l *Log) refusal(sc *scan, token string) error {
	f := sc.fs.first()
	var b strings.Builder
	fmt.Fprintf(&b, "%v: %s", ErrStoreMismatch, f)
	if n := sc.fs.total - 1; n > 0 {
		fmt.Fprintf(&b, " (and %d more finding(s):", n)
		shown := 0
		for _, g := range sc.fs.list {
			if g == f || shown == 3 {
				continue
			}
			fmt.Fprintf(&b, " %s;", g)
			shown++
		}
		b.WriteString(" ...)")
	}
	if sc.fs.fatal == 0 && token != "" {
		fmt.Fprintf(&b, "; after checking the store (audit verify --db), an operator may adopt it as it is, which signs it and records the adoption in the log: set adopt=%s", token)
	}
	return &storeMismatch{msg: b.String(), first: f}
}

// FirstFinding returns the first finding of an error of Open that refused
// a store (ErrStoreMismatch), or false.
func FirstFinding(err error) (Finding, bool) {
	var m *storeMismatch
	if errors.As(err, &m) {
		return m.first, true
	}
	return Finding{}, false
}

// storeMismatch is a store that fails a check; it wraps ErrStoreMismatch.
type storeMismatch struct {
	msg   string
	first Finding
}

func (e *storeMismatch) Error() string { return e.msg }
func (e *storeMismatch) Unwrap() error { return ErrStoreMismatch }

// adoptionToken binds an adoption to the exact state found: the tree size
// and root and every finding.
func adoptionToken(head uint64, root []byte, fs findings) string {
	h := sha256.New()
	fmt.Fprintf(h, "credmatrix audit adoption v1\n%d %x %d\n", head, root, fs.total)
	for _, f := range fs.list {
		fmt.Fprintf(h, "%d %s\n", f.Sequence, f.What)
	}
	return fmt.Sprintf("%d-%s", head, hex.EncodeToString(h.Sum(nil)[:8]))
}

// Adoption is what an operator adopted at Open (WithAdoption).
type Adoption struct {
	// Token is the adoption token.
	Token string
	// Findings are what the store's check found (the first ones).
	Findings []Finding
	// Sequence is the sequence of the KIND_AUDIT_ADMIN event that
	// records the adoption.
	Sequence uint64
}

// Adopted returns the adoption Open performed, or nil.
func (l *Log) Adopted() *Adoption { return l.adopted }

// open checks the whole store at start-up and builds the tree. It returns
// the adoption to record, if the operator adopted the store.
func (l *Log) open(ctx context.Context) (*Adoption, error) {
	var kept *checkpoint.Checkpoint
	if l.kept != nil {
		note, err := l.kept.Load()
		if err != nil {
			return nil, fmt.Errorf("read the kept checkpoint: %w", err)
		}
		if len(note) > 0 {
			c, err := l.signer.Verifier().Open(note)
			if err != nil {
				return nil, fmt.Errorf("%w: the kept checkpoint is not a checkpoint of this log (key %s): %v; if a new log was started on purpose, move the kept checkpoint away", ErrStoreMismatch, l.signer.KeyID(), err)
			}
			kept = &c
		}
	}
	base, err := l.loadBase(ctx)
	if err != nil {
		return nil, err
	}
	var sc scan
	if err := l.scanStore(ctx, &sc); err != nil {
		return nil, err
	}
	if sc.tilesWritten > 0 {
		l.logf("audit log: rebuilt Merkle tree tiles missing from the store", "tiles", sc.tilesWritten)
	}
	l.opened = OpenInfo{Loaded: base, Checked: sc.head - base, TilesRebuilt: sc.tilesWritten}
	root := func(size uint64) ([]byte, error) {
		switch {
		case size == sc.st.Size():
			return sc.st.Root(), nil
		case size == base:
			return l.tree.Root(), nil
		case size > base && size < sc.st.Size():
			return l.rootAfter(ctx, base, size)
		}
		return nil, fmt.Errorf("root of size %d: not between the loaded tree (%d) and the store's head (%d)", size, base, sc.st.Size())
	}
	keptAbove := kept
	if kept != nil && kept.Size < base {
		// The tree was loaded from a later checkpoint: a consistency
		// proof read from the stored tiles, checked between the kept
		// root and the loaded (signed) root, proves the store extends
		// the kept checkpoint without re-hashing the log.
		keptAbove = nil
		if err := l.checkKeptBelow(ctx, *kept, base, &sc); err != nil {
			return nil, err
		}
	}
	if err := l.checkTrust(&sc, root, keptAbove); err != nil {
		return nil, err
	}
	if p := l.pruned.Load(); p.End > 0 && base <= p.End && sc.pruneEnd < p.End {
		// The events read include where the log records its prunes (after
		// the pruned range): one must cover what the store says is gone.
		sc.fs.add(Finding{Sequence: p.End, What: fmt.Sprintf("the store says the events below %d were archived and pruned, but no prune the log recorded reaches %d (events were deleted behind its back)", p.End, p.End)})
	}
	if sc.fs.total == 0 {
		l.tree.Commit(sc.st)
		l.latest.Store(sc.latest)
		l.indexed.Store(min(sc.indexed, sc.head))
		l.storeCompactRange(ctx, sc.latest)
		return nil, nil
	}
	rootHead := sc.st.Root()
	token := adoptionToken(sc.head, rootHead, sc.fs)
	if sc.fs.fatal > 0 || l.adopt != token {
		return nil, l.refusal(&sc, token)
	}
	// Adopted: rebuild what is derived, then sign (recordAdoption).
	if len(sc.repair) > 0 || sc.indexBad != ^uint64(0) {
		from := min(sc.indexBad, sc.indexed)
		for _, r := range sc.repair {
			from = min(from, r.Sequence)
		}
		if err := l.store.Repair(ctx, sc.repair, from); err != nil {
			return nil, fmt.Errorf("adopt: rebuild columns: %w", err)
		}
		sc.indexed = from
	}
	if len(sc.badTiles) > 0 {
		if err := l.store.AddTiles(ctx, sc.badTiles); err != nil {
			return nil, fmt.Errorf("adopt: rebuild tiles: %w", err)
		}
	}
	l.tree.Commit(sc.st)
	l.latest.Store(sc.latest)
	l.indexed.Store(min(sc.indexed, sc.head))
	return &Adoption{Token: token, Findings: slices.Clone(sc.fs.list)}, nil
}

// OpenInfo says what Open checked.
type OpenInfo struct {
	// Loaded is the size of the tree loaded from the store (the latest
	// checkpoint that carries a compact range, checked against its signed
	// root); 0 when Open checked the whole store.
	Loaded uint64
	// Checked is how many events Open read and re-hashed: those after
	// Loaded.
	Checked uint64
	// TilesRebuilt is how many tiles Open rebuilt from the events and
	// wrote (a store from before tiles, or one that lost some).
	TilesRebuilt int
}

// OpenInfo returns what Open checked, for its log line.
func (l *Log) OpenInfo() OpenInfo { return l.opened }

// loadBase loads the log's tree from the latest checkpoint that carries a
// compact range, so that start-up checks only the events after it; it
// returns that checkpoint's size (0: the tree stays empty and the whole
// store is checked, as with WithFullVerification, for a store from before
// tiles or whose tree state does not check out). What it loads is
// trusted only once it matches a checkpoint signed by the log's key.
//
// A store whose older events were archived and pruned (Prune) is checked
// in full from its prune base: the last checkpoint with a compact range
// at or below the pruned end, whose tree loads from the stored tiles.
func (l *Log) loadBase(ctx context.Context) (uint64, error) {
	p, err := l.store.Pruned(ctx)
	if err != nil {
		return 0, fmt.Errorf("read the pruned state: %w", err)
	}
	l.pruned.Store(&p)
	if l.full || l.signer == nil {
		return l.loadPrunedBase(ctx, p)
	}
	cp, ok, err := l.store.LatestCompactRange(ctx)
	if err != nil {
		return 0, fmt.Errorf("read the latest compact range: %w", err)
	}
	if !ok || cp.Size < p.Base {
		return l.loadPrunedBase(ctx, p)
	}
	t, err := l.loadTreeAt(ctx, cp)
	if err != nil {
		// Derived data that does not check out is not a reason to refuse
		// the store, only to check all of it: the full check decides.
		l.logf("audit log: the stored tree state does not check out; checking the whole store", "tree_size", cp.Size, "problem", err.Error())
		return l.loadPrunedBase(ctx, p)
	}
	l.tree, l.crSize = t, cp.Size
	return cp.Size, nil
}

// loadTreeAt loads the tree of the checkpoint cp (which carries its
// compact range) from the stored tiles and the last leaves before it, and
// checks it against cp's signed root.
func (l *Log) loadTreeAt(ctx context.Context, cp StoredCheckpoint) (*tiles.Tree, error) {
	c, err := l.signer.Verifier().Open(cp.Note)
	if err != nil {
		return nil, fmt.Errorf("the checkpoint of size %d is not signed by key %s: %v", cp.Size, l.signer.KeyID(), err)
	}
	if c.Size != cp.Size {
		return nil, fmt.Errorf("the checkpoint stored for size %d signs size %d", cp.Size, c.Size)
	}
	begin := tiles.EdgeLeaves(cp.Size)
	edge := make([]tiles.Hash, 0, cp.Size-begin)
	if begin < cp.Size {
		rows, err := l.store.ReadRows(ctx, begin, int(cp.Size-begin))
		if err != nil {
			return nil, fmt.Errorf("read events %d to %d: %w", begin, cp.Size-1, err)
		}
		for i, row := range rows {
			if row.Sequence != begin+uint64(i) {
				return nil, fmt.Errorf("event %d is missing", begin+uint64(i))
			}
			edge = append(edge, leaf.Hash(row.Data))
		}
	}
	t, err := tiles.Load(ctx, l.store, cp.Size, edge, cp.CompactRange, tiles.WithCacheTiles(l.tileCache))
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(t.Root(), c.Root) {
		return nil, fmt.Errorf("%w: the compact range stored with the checkpoint of size %d does not hash to its signed root", tiles.ErrMismatch, cp.Size)
	}
	return t, nil
}

// rootAfter returns the root of the tree of size leaves, between the
// loaded tree (base) and the store's head, re-hashing the events between.
func (l *Log) rootAfter(ctx context.Context, base, size uint64) ([]byte, error) {
	st := l.tree.Stage(nil)
	for next := base; next < size; {
		rows, err := l.store.ReadRows(ctx, next, int(min(loadBatch, size-next)))
		if err != nil {
			return nil, err
		}
		if len(rows) == 0 {
			return nil, fmt.Errorf("root of size %d: event %d is missing", size, next)
		}
		hs := make([]tiles.Hash, len(rows))
		for i, row := range rows {
			hs[i] = leaf.Hash(row.Data)
		}
		st.Extend(hs)
		next += uint64(len(rows))
	}
	return st.Root(), nil
}

// checkKeptBelow checks the kept checkpoint, older than the loaded tree
// (base), by a consistency proof from stored tiles between the two signed
// roots.
func (l *Log) checkKeptBelow(ctx context.Context, kept checkpoint.Checkpoint, base uint64, sc *scan) error {
	p, err := l.tree.Consistency(ctx, kept.Size, base)
	if err == nil {
		err = proof.VerifyConsistency(rfc6962.DefaultHasher, kept.Size, base, p, kept.Root, l.tree.Root())
	}
	if err != nil {
		sc.fs.add(Finding{Sequence: 0, What: fmt.Sprintf("the store does not extend the kept checkpoint (tree size %d): no consistency proof from it to the store's checkpoint of size %d (%v); the store was rewritten or replaced", kept.Size, base, err)})
	}
	return nil
}

// storeCompactRange stores the compact range of the latest checkpoint
// when no checkpoint carries one near it (a store from before tiles, just
// rebuilt), so that the next start-up is bounded. Best effort: a store
// that cannot (a replica) leaves it to the writer.
func (l *Log) storeCompactRange(ctx context.Context, cp *StoredCheckpoint) {
	if cp == nil || l.signer == nil || cp.Size != l.tree.Size() || !l.compactRangeDue(cp.Size) {
		return
	}
	if err := l.store.AddCompactRange(ctx, cp.Size, l.tree.CompactRange()); err != nil {
		if !errors.Is(err, errNotWriter) {
			l.logf("audit log: cannot store the compact range of the latest checkpoint", "tree_size", cp.Size, "error", err.Error())
		}
		return
	}
	l.crSize = cp.Size
}

// recordAdoption appends the KIND_AUDIT_ADMIN event that records an
// adoption; its commit signs every adopted event.
func (l *Log) recordAdoption(ctx context.Context, a *Adoption) error {
	var what []string
	for _, f := range a.Findings {
		what = append(what, f.String())
	}
	reason := "an operator adopted the store as it was (adoption " + a.Token + "): " + strings.Join(what, "; ")
	if len(reason) > 4096 {
		reason = reason[:4096]
	}
	e := &auditv1.Event{
		Id:       "audit-adoption-" + a.Token,
		Time:     timestamppb.New(l.clock()),
		Kind:     auditv1.Kind_KIND_AUDIT_ADMIN,
		Decision: auditv1.Decision_DECISION_ALLOW,
		Reason:   strings.ToValidUTF8(reason, "?"),
		Actor:    &auditv1.Actor{Principal: "operator"},
		Detail:   &auditv1.Event_Admin{Admin: &auditv1.AdminDetail{Action: "adopt-store"}},
	}
	if err := validateEvent(e); err != nil {
		return fmt.Errorf("adoption event%s", err)
	}
	res, err := l.record(ctx, SourceAudit, []*auditv1.Event{e}, true)
	if err != nil {
		return fmt.Errorf("record the adoption: %w", err)
	}
	a.Sequence = res[0].GetSequence()
	l.adopted = a
	return nil
}

// SourceAudit is the source_service of the events the audit log records
// about itself (adoptions).
const SourceAudit = "credmatrix-audit"

// extend follows the store: it checks what was appended after the tree's
// head (by another writer, or by a commit whose outcome was lost) and
// extends the tree to it. A store that fails the check stops the Log.
func (l *Log) extend(ctx context.Context) error {
	if err := l.usable(); err != nil {
		return err
	}
	var sc scan
	if err := l.scanStore(ctx, &sc); err != nil {
		return err
	}
	old := l.latest.Load()
	if sc.latest != nil && old != nil && sc.latest.Size < old.Size {
		sc.fs.add(Finding{Sequence: sc.latest.Size, What: fmt.Sprintf("the store's latest checkpoint (size %d) is older than one this log served (size %d): rolled back", sc.latest.Size, old.Size)})
	}
	base := l.tree.Size()
	root := func(size uint64) ([]byte, error) {
		switch {
		case size == sc.st.Size():
			return sc.st.Root(), nil
		case size == base:
			return l.tree.Root(), nil
		case size < base:
			return l.tree.RootAt(ctx, size)
		}
		return l.rootAfter(ctx, base, size)
	}
	if sc.latest != nil && sc.latest.Size > base && sc.latest.Size < sc.st.Size() {
		// An unsigned tail after a checkpoint we have not seen: the
		// tail is the finding, the root check needs the prefix.
		sc.fs.add(Finding{Sequence: sc.latest.Size, What: fmt.Sprintf("events %d to %d are signed by no checkpoint", sc.latest.Size, sc.st.Size()-1)})
	} else if err := l.checkTrust(&sc, root, nil); err != nil {
		return err
	}
	if sc.fs.total > 0 {
		f := sc.fs.first()
		b := &domainerr.Error{Code: domainerr.Unavailable, Message: fmt.Sprintf("audit log stopped: the store failed its check at sequence %d (%s)", f.Sequence, f.What), Err: ErrStoreMismatch}
		l.broken.Store(b)
		l.logf("audit log stopped: the store failed its check", "sequence", f.Sequence, "problem", f.What)
		return b
	}
	if p, err := l.store.Pruned(ctx); err == nil && p.End > l.FirstSequence() {
		l.pruned.Store(&p) // the sequencer pruned
	}
	if sc.st.Size() == base {
		if sc.latest != nil && (old == nil || sc.latest.Size > old.Size) {
			l.latest.Store(sc.latest)
		}
		return nil
	}
	l.tree.Commit(sc.st)
	if sc.latest != nil && sc.latest.CompactRange != nil {
		l.crSize = sc.latest.Size
	}
	l.latest.Store(sc.latest)
	l.wake()
	select {
	case l.idxWake <- struct{}{}:
	default:
	}
	return nil
}

// followStore is the committer's periodic (or requested) read of what
// another writer appended.
func (l *Log) followStore() error {
	ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
	defer cancel()
	if err := l.extend(ctx); err != nil {
		return unavailable("audit store unavailable", err) // a domain error stays as it is
	}
	return nil
}
