// Package verify checks an exported audit log (a bundle) against the log's
// trusted public key and, optionally, a checkpoint the operator kept from
// earlier: every event is re-hashed into the RFC 6962 tree, every
// checkpoint's signature and root are checked, consistency proofs are
// checked, and every problem is pinpointed by sequence number.
//
// What can be pinpointed exactly: a missing (deleted) event, events out of
// order or duplicated, an event that no longer decodes, and a log cut
// short or rolled back (the first sequence missing). A modified event that
// still decodes is located by the signed checkpoints: it lies in the first
// checkpoint interval whose root no longer matches; the audit service
// signs a checkpoint per commit batch, so that is its commit batch.
//
// Verification goes on past a problem where it can (an undecodable event
// does not stop the others from being checked) and reports every problem
// it finds in Report.Problems, earliest first. Events after the last
// signed checkpoint are reported as unsigned: nothing proves them. Two
// signed checkpoints of one tree size that disagree are a fork.
package verify

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"math/bits"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/credmatrix/credmatrix/clients/auditclient/bundle"
	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// ProblemKind classifies the first problem found.
type ProblemKind string

// The kinds of problems verify reports.
const (
	// Modified: an event's bytes differ from what a signed checkpoint
	// commits to.
	Modified ProblemKind = "modified"
	// Missing: the event with this sequence is absent (deleted).
	Missing ProblemKind = "missing"
	// Reordered: an event sits at the wrong position (swapped, duplicated).
	Reordered ProblemKind = "reordered"
	// Truncated: a checkpoint in the bundle commits to more events than the
	// bundle holds; events from Sequence on were removed.
	Truncated ProblemKind = "truncated"
	// Rollback: the log is behind (or diverges from) the checkpoint the
	// operator kept; events from Sequence on are missing or different.
	Rollback ProblemKind = "rollback"
	// BadSignature: a checkpoint is not signed by the trusted key for this
	// log's origin.
	BadSignature ProblemKind = "bad-signature"
	// Inconsistent: checkpoints or proofs contradict each other (a forked
	// log).
	Inconsistent ProblemKind = "inconsistent"
	// Unverified: the bundle holds no valid checkpoint, so nothing proves
	// its events.
	Unverified ProblemKind = "unverified"
	// BadStart: the start hashes of a bundle that begins after the first
	// event (the compact range of the tree before it) are malformed or do
	// not match a signed checkpoint.
	BadStart ProblemKind = "bad-start"
	// Unsigned: events after the last valid checkpoint; no signature
	// covers them (the audit service signs every commit batch, so such
	// events were written behind its back, or are from before it did).
	Unsigned ProblemKind = "unsigned"
	// Fork: two signed checkpoints of one tree size disagree (the kept
	// one and the log's, or two in the log): the log signed two histories.
	Fork ProblemKind = "fork"
	// ColumnMismatch: the store's columns of an event (what queries
	// filter on) disagree with the event itself; reported by whoever read
	// the store (the service, or a forensic read of the store file).
	ColumnMismatch ProblemKind = "column-mismatch"
)

// maxProblems bounds the problems a report lists (the first ones).
const maxProblems = 100

// Problem is the first thing wrong with a log.
type Problem struct {
	// Kind classifies it.
	Kind ProblemKind `json:"kind"`
	// Sequence is the first affected event (for Modified, the start of the
	// checkpoint interval that holds the modified event).
	Sequence uint64 `json:"sequence"`
	// End, for Modified, is the end (exclusive) of that interval; the
	// modified event is in [Sequence, End). Equal to Sequence+1 when the
	// event is pinpointed exactly.
	End uint64 `json:"end,omitempty"`
	// TreeSize is the size of the checkpoint involved, if any.
	TreeSize uint64 `json:"tree_size,omitempty"`
	// Detail explains it for humans.
	Detail string `json:"detail"`
}

// String is "<kind> at sequence <n>: <detail>".
func (p *Problem) String() string {
	return fmt.Sprintf("%s at sequence %d: %s", p.Kind, p.Sequence, p.Detail)
}

// Report is the outcome of a verification.
type Report struct {
	// Events is the number of events in the bundle.
	Events uint64 `json:"events"`
	// First is the sequence of the bundle's first event (0 unless the
	// bundle is a range: an archive or a pruned log's export).
	First uint64 `json:"first,omitempty"`
	// Sealed reports that a valid signed checkpoint commits to exactly the
	// bundle's events (its tree size is First+Events): an archive that can
	// be pruned from the hot store.
	Sealed bool `json:"sealed,omitempty"`
	// StartRoot is the root of the tree before the first event (from the
	// start hashes) and EndRoot the root after the last: two bundles chain
	// when one's EndRoot is the next's StartRoot.
	StartRoot []byte `json:"-"`
	EndRoot   []byte `json:"-"`
	// startProven: a checkpoint at or after First matched, so the start
	// hashes are right.
	startProven bool
	// Checkpoints is the number of checkpoints checked.
	Checkpoints int `json:"checkpoints"`
	// VerifiedSize is the largest tree size proven by a valid checkpoint.
	VerifiedSize uint64 `json:"verified_size"`
	// Root is the root hash at VerifiedSize.
	Root []byte `json:"root,omitempty"`
	// Latest is the signed note of the largest valid checkpoint, for the
	// operator to keep.
	Latest []byte `json:"-"`
	// Unsigned is the number of events after the last valid checkpoint:
	// they verify as far as sequence and decoding go, but no signature
	// covers them (an Unsigned problem names them).
	Unsigned uint64 `json:"unsigned,omitempty"`
	// Problem is the earliest problem found; nil means the log verifies.
	Problem *Problem `json:"problem,omitempty"`
	// Problems are all the problems found (at most 100), earliest first.
	Problems []*Problem `json:"problems,omitempty"`
	// DecodedEvents are the decoded events (when Options.KeepEvents).
	DecodedEvents []*auditv1.Event `json:"-"`
	// Leaves are the events' leaf bytes (when Options.KeepLeaves), the
	// same events DecodedEvents would hold: those at their own sequence,
	// up to the first misplaced one.
	Leaves [][]byte `json:"-"`
}

// OK reports whether the log verified.
func (r *Report) OK() bool { return r.Problem == nil }

// OnlyUnsigned reports whether the only problem is events no checkpoint
// signs: everything up to VerifiedSize is proven.
func (r *Report) OnlyUnsigned() bool {
	for _, p := range r.Problems {
		if p.Kind != Unsigned {
			return false
		}
	}
	return r.Problem != nil
}

// Add records a problem found outside the bundle (a column mismatch
// reported by the store's reader) and keeps Problems sorted.
func (r *Report) Add(p *Problem) {
	if len(r.Problems) < maxProblems {
		r.Problems = append(r.Problems, p)
	}
	slices.SortStableFunc(r.Problems, func(a, b *Problem) int { return cmp.Compare(a.Sequence, b.Sequence) })
	r.Problem = r.Problems[0]
	r.Sealed = false
}

// AddColumnMismatch records that the store's columns of event seq
// disagree with the event.
func (r *Report) AddColumnMismatch(seq uint64, columns []string) {
	r.Add(&Problem{Kind: ColumnMismatch, Sequence: seq, End: seq + 1,
		Detail: fmt.Sprintf("the store's columns %s disagree with the event (queries filtering on them miss or wrongly match it)", strings.Join(columns, ", "))})
}

// Options configure Bundle.
type Options struct {
	// Key is the trusted verifier of the log (required).
	Key *checkpoint.Verifier
	// Trusted is a signed checkpoint the operator kept earlier (optional):
	// the log must contain and extend it.
	Trusted []byte
	// KeepEvents returns the decoded events in the report, for replay.
	KeepEvents bool
	// KeepLeaves returns the events' leaf bytes in the report, for
	// replay.ApplyLeaf, which decodes only what it uses. Without
	// KeepEvents only the sequence of each event is decoded.
	KeepLeaves bool
}

// Bundle verifies b. A bundle that starts after the first event (First >
// 0: an archive, or an export of a log whose older events were archived)
// is hashed into the tree from its Start compact range; a signed
// checkpoint covering its events proves the Start hashes too.
func Bundle(b *bundle.Bundle, opts Options) *Report {
	r := &Report{Events: uint64(len(b.Events)), First: b.First}
	h := rfc6962.DefaultHasher
	first, end := b.First, b.End()

	// 1. Every event decodes and sits at its own sequence.
	hashes := make([][32]byte, len(b.Events))
	if opts.KeepEvents {
		r.DecodedEvents = make([]*auditv1.Event, 0, len(b.Events))
	}
	if opts.KeepLeaves {
		r.Leaves = make([][]byte, 0, len(b.Events))
	}
	var seqProblem *Problem // the first misplaced event: positions after it shift
	var undecodable []*Problem
	events := make([]*auditv1.Event, len(b.Events))
	// Hashing and decoding are independent per event: spread them over
	// the CPUs in chunks.
	const chunk = 4096
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for start := 0; start < len(b.Events); start += chunk {
		end := min(start+chunk, len(b.Events))
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			hh := sha256.New()
			for i := start; i < end; i++ {
				data := b.Events[i]
				hh.Reset()
				hh.Write([]byte{0}) // RFC 6962 leaf prefix
				hh.Write(data)
				hh.Sum(hashes[i][:0])
				if !opts.KeepEvents {
					// Verification alone needs only the sequence: walk the
					// top-level wire format instead of decoding everything.
					events[i] = sequenceOnly(data)
					continue
				}
				e := new(auditv1.Event)
				if err := proto.Unmarshal(data, e); err != nil {
					e = nil
				}
				events[i] = e
			}
		}()
	}
	wg.Wait()
	for i, e := range events {
		seq := first + uint64(i)
		if e == nil {
			// Goes on past it: the leaf is still hashed, the others are
			// still checked.
			if len(undecodable) < maxProblems {
				undecodable = append(undecodable, &Problem{Kind: Modified, Sequence: seq, End: seq + 1, Detail: "the event does not decode"})
			}
			continue
		}
		got := e.GetSequence()
		if got == seq {
			if opts.KeepEvents && seqProblem == nil {
				r.DecodedEvents = append(r.DecodedEvents, e)
			}
			if opts.KeepLeaves && seqProblem == nil {
				r.Leaves = append(r.Leaves, b.Events[i])
			}
			continue
		}
		if seqProblem != nil {
			continue
		}
		later := -1
		for j := i + 1; j < len(events); j++ {
			if events[j] != nil && events[j].GetSequence() == seq {
				later = j
				break
			}
		}
		switch {
		case later >= 0:
			seqProblem = &Problem{Kind: Reordered, Sequence: seq, End: seq + 1, Detail: fmt.Sprintf("sequence %d is at position %d and position %d holds sequence %d: events were swapped or moved", seq, first+uint64(later), seq, got)}
		case got > seq:
			seqProblem = &Problem{Kind: Missing, Sequence: seq, End: seq + 1, Detail: fmt.Sprintf("the event after sequence %d is sequence %d: events %d to %d are missing", int64(seq)-1, got, seq, got-1)}
		default:
			seqProblem = &Problem{Kind: Reordered, Sequence: seq, End: seq + 1, Detail: fmt.Sprintf("position %d holds sequence %d again (duplicated or moved)", seq, got)}
		}
	}

	// 2. Checkpoints: signature first.
	type good struct {
		size uint64
		root []byte
		note []byte
	}
	var cps []good
	var problems []*Problem
	report := func(p *Problem) {
		if len(problems) < maxProblems {
			problems = append(problems, p)
		}
	}
	var cpProblem *Problem // the first failed checkpoint (later ones fail with it)
	for _, note := range b.Checkpoints {
		cp, err := opts.Key.Open(note)
		if err != nil {
			size := sizeOf(note)
			report(&Problem{Kind: BadSignature, Sequence: size, TreeSize: size, Detail: fmt.Sprintf("the checkpoint claiming tree size %d is not signed by the trusted key %s", size, opts.Key.KeyID())})
			continue
		}
		r.Checkpoints++
		cps = append(cps, good{cp.Size, cp.Root, note})
	}
	slices.SortStableFunc(cps, func(a, b good) int { return cmp.Compare(a.size, b.size) })
	// Two signed checkpoints of one size with different roots: a fork.
	for i := 1; i < len(cps); i++ {
		if cps[i].size == cps[i-1].size && !bytes.Equal(cps[i].root, cps[i-1].root) {
			report(&Problem{Kind: Fork, Sequence: cps[i].size, TreeSize: cps[i].size,
				Detail: fmt.Sprintf("two signed checkpoints of tree size %d disagree: roots %s and %s (the log signed two histories)", cps[i].size, b64(cps[i-1].root), b64(cps[i].root))})
		}
	}
	var trusted *checkpoint.Checkpoint
	var trustProblem *Problem
	if len(opts.Trusted) > 0 {
		cp, err := opts.Key.Open(opts.Trusted)
		if err != nil {
			trustProblem = &Problem{Kind: BadSignature, Detail: "the kept checkpoint is not signed by the trusted key: " + err.Error()}
		} else {
			trusted = &cp
		}
	}

	// 3. Roots of the events' tree at every size a checkpoint names, from
	// the Start compact range (O(log n) memory).
	want := map[uint64]bool{first: true, end: true}
	for _, cp := range cps {
		want[cp.size] = true
	}
	if trusted != nil {
		want[trusted.Size] = true
	}
	roots, startErr := rootsAt(b, hashes, want)
	if startErr != nil {
		r.Problem = &Problem{Kind: BadStart, Sequence: first, Detail: startErr.Error()}
		r.Problems = []*Problem{r.Problem}
		return r
	}
	r.StartRoot, r.EndRoot = roots[first], roots[end]
	var prev uint64 = first
	for _, cp := range cps {
		if cp.size < first {
			continue // proven only through a consistency proof (below)
		}
		if cp.size > end {
			cpProblem = first1(cpProblem, &Problem{Kind: Truncated, Sequence: end, TreeSize: cp.size,
				Detail: fmt.Sprintf("a signed checkpoint commits to %d events but the log holds %d: events %d to %d were removed", cp.size, end, end, cp.size-1)})
			break
		}
		root := roots[cp.size]
		if !bytes.Equal(root, cp.root) {
			var p *Problem
			switch {
			case cp.size == first:
				p = &Problem{Kind: BadStart, Sequence: first, TreeSize: cp.size,
					Detail: fmt.Sprintf("the start hashes of the bundle (the tree before sequence %d) do not match the signed checkpoint at tree size %d", first, cp.size)}
			case cp.size-prev == 1:
				p = &Problem{Kind: Modified, Sequence: prev, End: cp.size, TreeSize: cp.size,
					Detail: fmt.Sprintf("the event does not hash to the leaf the signed checkpoint at tree size %d commits to", cp.size)}
			default:
				p = &Problem{Kind: Modified, Sequence: prev, End: cp.size, TreeSize: cp.size,
					Detail: fmt.Sprintf("the events do not hash to the signed root at tree size %d (the last matching checkpoint is at size %d): an event in %d..%d was modified", cp.size, prev, prev, cp.size-1)}
				if prev == first && first > 0 && !r.startProven {
					p.Detail += fmt.Sprintf(", or the start hashes (the tree before sequence %d) are wrong", first)
				}
			}
			cpProblem = first1(cpProblem, p)
			break
		}
		prev = cp.size
		r.startProven = true
		r.VerifiedSize, r.Root, r.Latest = cp.size, root, cp.note
		if cp.size == end {
			r.Sealed = true
		}
	}

	// 4. Consistency proofs between signed roots: a checkpoint before the
	// bundle's first event is proven only this way.
	signed := map[uint64][]byte{}
	for _, cp := range cps {
		signed[cp.size] = cp.root
	}
	for _, p := range b.Proofs {
		r1, ok1 := signed[p.From]
		r2, ok2 := signed[p.To]
		if !ok1 || !ok2 {
			continue // a proof between unsigned sizes proves nothing
		}
		if err := proof.VerifyConsistency(h, p.From, p.To, p.Hashes, r1, r2); err != nil {
			report(&Problem{Kind: Inconsistent, Sequence: p.From, TreeSize: p.To,
				Detail: fmt.Sprintf("the signed checkpoints at sizes %d and %d are not consistent: the log was forked or rewritten after sequence %d", p.From, p.To, p.From-1)})
		}
	}

	// 5. The operator's kept checkpoint.
	if trusted != nil {
		cp := *trusted
		switch {
		case cp.Size > end:
			trustProblem = &Problem{Kind: Rollback, Sequence: end, TreeSize: cp.Size,
				Detail: fmt.Sprintf("the log holds %d events but the kept checkpoint commits to %d: rolled back or truncated, events %d to %d are gone", end, cp.Size, end, cp.Size-1)}
		case cp.Size < first:
			// Before the bundle's events: only a consistency proof from it
			// to a checkpoint the events prove can vouch for it.
			proven := false
			for _, p := range b.Proofs {
				if p.From != cp.Size || p.To < first || p.To > r.VerifiedSize || roots[p.To] == nil {
					continue
				}
				if proof.VerifyConsistency(h, p.From, p.To, p.Hashes, cp.Root, roots[p.To]) != nil {
					trustProblem = &Problem{Kind: Rollback, Sequence: cp.Size, TreeSize: p.To,
						Detail: fmt.Sprintf("the log at size %d is not consistent with the kept checkpoint of size %d: it was rewritten below sequence %d", p.To, cp.Size, cp.Size)}
					break
				}
				proven = true
				break
			}
			if !proven && trustProblem == nil {
				trustProblem = &Problem{Kind: Unverified, Sequence: first, TreeSize: cp.Size,
					Detail: fmt.Sprintf("the kept checkpoint (size %d) is older than the bundle's first event (%d) and the bundle holds no consistency proof from it", cp.Size, first)}
			}
		default:
			root := roots[cp.Size]
			var same *good
			for i := range cps {
				if cps[i].size == cp.Size {
					same = &cps[i]
				}
			}
			if same != nil && !bytes.Equal(same.root, cp.Root) {
				// Both are signed: not a rollback of one history but two
				// histories.
				report(&Problem{Kind: Fork, Sequence: cp.Size, TreeSize: cp.Size,
					Detail: fmt.Sprintf("the kept checkpoint and the log's checkpoint both sign tree size %d with different roots (kept %s, log %s): the log signed two histories", cp.Size, b64(cp.Root), b64(same.root))})
			} else if !bytes.Equal(root, cp.Root) {
				trustProblem = &Problem{Kind: Rollback, Sequence: first, End: cp.Size, TreeSize: cp.Size,
					Detail: fmt.Sprintf("the first %d events do not hash to the kept checkpoint's root: the log was rewritten below sequence %d", cp.Size, cp.Size)}
				// Narrow with the bundle's own checkpoints.
				for _, c := range cps {
					if c.size <= cp.Size && c.size > trustProblem.Sequence && c.size >= first {
						if bytes.Equal(roots[c.size], c.root) {
							trustProblem.Sequence = c.size
						}
					}
				}
			} else if cp.Size > r.VerifiedSize {
				r.VerifiedSize, r.Root, r.Latest = cp.Size, root, opts.Trusted
			}
		}
	}

	// An exact finding inside a checkpoint interval explains it.
	exact := seqProblem
	if len(undecodable) > 0 && (exact == nil || undecodable[0].Sequence < exact.Sequence) {
		exact = undecodable[0]
	}
	if exact != nil && cpProblem != nil && cpProblem.Kind == Modified && exact.Sequence < cpProblem.End {
		cpProblem = nil
	}
	if exact != nil && trustProblem != nil && trustProblem.Kind == Rollback && trustProblem.End > 0 && exact.Sequence < trustProblem.End {
		trustProblem = nil
	}
	for _, p := range []*Problem{seqProblem, cpProblem, trustProblem} {
		if p != nil {
			report(p)
		}
	}
	for _, p := range undecodable {
		report(p)
	}
	var lastCP uint64
	if n := len(cps); n > 0 {
		lastCP = cps[n-1].size
	}
	switch {
	case len(problems) > 0:
	case r.VerifiedSize < first || (r.VerifiedSize == first && end > first) || r.VerifiedSize == 0 && end > 0:
		report(&Problem{Kind: Unverified, Sequence: first, End: end, Detail: "no valid signed checkpoint covers the events"})
	}
	if r.VerifiedSize < end && r.VerifiedSize >= first {
		r.Unsigned = end - r.VerifiedSize
		// Only when every checkpoint held: after a failed one, the events
		// beyond are unproven for that reason, not unsigned.
		if r.VerifiedSize > first && r.VerifiedSize >= lastCP {
			report(&Problem{Kind: Unsigned, Sequence: r.VerifiedSize, End: end,
				Detail: fmt.Sprintf("events %d to %d are signed by no checkpoint: nothing proves them (the service signs every commit batch; they may have been written behind its back)", r.VerifiedSize, end-1)})
		}
	}
	if len(problems) > 0 {
		slices.SortStableFunc(problems, func(a, b *Problem) int { return cmp.Compare(a.Sequence, b.Sequence) })
		r.Problems, r.Problem = problems, problems[0]
		r.Sealed = false
	}
	return r
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// rootsAt returns the root of the tree at each size in want within
// [b.First, b.End()], hashing the events from the Start compact range.
func rootsAt(b *bundle.Bundle, hashes [][32]byte, want map[uint64]bool) (map[uint64][]byte, error) {
	if got, need := len(b.Start), bits.OnesCount64(b.First); got != need {
		return nil, fmt.Errorf("the start hashes are %d, the tree of %d events has %d perfect subtrees", got, b.First, need)
	}
	rf := &compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	cr, err := rf.NewRange(0, b.First, slices.Clone(b.Start))
	if err != nil {
		return nil, err
	}
	roots := map[uint64][]byte{}
	root := func() []byte {
		if cr.End() == 0 {
			return rfc6962.DefaultHasher.EmptyRoot()
		}
		h, _ := cr.GetRootHash(nil)
		return h
	}
	if want[cr.End()] {
		roots[cr.End()] = root()
	}
	for i := range hashes {
		if err := cr.Append(hashes[i][:], nil); err != nil {
			return nil, err
		}
		if want[cr.End()] {
			roots[cr.End()] = root()
		}
	}
	return roots, nil
}

// sequenceOnly checks that data is well-formed protobuf at the top level
// and returns an Event holding just its sequence (field 1), or nil.
func sequenceOnly(data []byte) *auditv1.Event {
	e := &auditv1.Event{}
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return nil
		}
		data = data[n:]
		if num == 1 && typ == protowire.VarintType {
			v, m := protowire.ConsumeVarint(data)
			if m < 0 {
				return nil
			}
			e.Sequence = v
			data = data[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, data)
		if m < 0 {
			return nil
		}
		data = data[m:]
	}
	return e
}

func first1(have, p *Problem) *Problem {
	if have != nil {
		return have
	}
	return p
}

// sizeOf reads the claimed tree size of an unverifiable note, for the
// report only.
func sizeOf(note []byte) uint64 {
	lines := bytes.SplitN(note, []byte("\n"), 3)
	if len(lines) < 2 {
		return 0
	}
	var n uint64
	fmt.Sscanf(string(lines[1]), "%d", &n)
	return n
}

// WriteText writes r for a human: what was proven, or the first problem
// and how far the log is still proven. hadKept says whether the run
// checked the log against a kept checkpoint.
func (r *Report) WriteText(w io.Writer, hadKept bool) {
	if r.OK() {
		if r.First > 0 {
			fmt.Fprintf(w, "verified: %d events (sequences %d to %d), %d signed checkpoint(s), tree size %d, root %s\n",
				r.Events, r.First, r.First+r.Events-1, r.Checkpoints, r.VerifiedSize, base64.StdEncoding.EncodeToString(r.Root))
		} else {
			fmt.Fprintf(w, "verified: %d events, %d signed checkpoint(s), tree size %d, root %s\n",
				r.Events, r.Checkpoints, r.VerifiedSize, base64.StdEncoding.EncodeToString(r.Root))
		}
		if hadKept {
			fmt.Fprintln(w, "consistent with the kept checkpoint: no rollback, no rewrite")
		}
		return
	}
	if r.OnlyUnsigned() {
		fmt.Fprintf(w, "NOT VERIFIED: UNSIGNED events %d to %d: %s\n", r.Problem.Sequence, r.Problem.End-1, r.Problem.Detail)
	} else {
		fmt.Fprintf(w, "NOT VERIFIED: %s\n", r.Problem)
	}
	for i, p := range r.Problems {
		if i > 0 {
			fmt.Fprintf(w, "  also: %s\n", p)
		}
		switch {
		case p.Kind == Modified && p.End > p.Sequence+1:
			fmt.Fprintf(w, "  the modified event is one of sequences %d to %d (one commit batch: the span between two signed checkpoints)\n", p.Sequence, p.End-1)
		case i == 0:
			fmt.Fprintf(w, "  first bad sequence: %d\n", p.Sequence)
		}
	}
	if r.VerifiedSize > r.First {
		fmt.Fprintf(w, "  events %d to %d are proven by a signed checkpoint\n", r.First, r.VerifiedSize-1)
	}
}

// Chain checks that bundles verified one by one (in log order) form one
// log: the first starts at sequence 0, each next one starts where the
// previous one ended, and at the same tree root (the previous one's events
// hash to the root the next one's start hashes commit to). It returns the
// first break, or nil. Each report must be OK on its own.
func Chain(reports []*Report) *Problem {
	var end uint64
	var root []byte
	for i, r := range reports {
		switch {
		case !r.OK():
			return &Problem{Kind: r.Problem.Kind, Sequence: r.Problem.Sequence, Detail: fmt.Sprintf("bundle %d: %s", i+1, r.Problem.Detail)}
		case r.First > end:
			return &Problem{Kind: Missing, Sequence: end, End: r.First, Detail: fmt.Sprintf("bundle %d starts at sequence %d: events %d to %d are in no bundle", i+1, r.First, end, r.First-1)}
		case r.First < end:
			return &Problem{Kind: Inconsistent, Sequence: r.First, Detail: fmt.Sprintf("bundle %d starts at sequence %d, before the end of bundle %d (%d): the bundles overlap", i+1, r.First, i, end)}
		case i > 0 && !bytes.Equal(r.StartRoot, root):
			return &Problem{Kind: Inconsistent, Sequence: r.First, Detail: fmt.Sprintf("bundle %d does not continue bundle %d: the tree roots at sequence %d differ (forked or rewritten)", i+1, i, r.First)}
		}
		end, root = r.First+r.Events, r.EndRoot
	}
	return nil
}
