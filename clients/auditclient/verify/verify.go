// Package verify checks an exported audit log (a bundle) against the log's
// trusted public key and, optionally, a checkpoint the operator kept from
// earlier: every event is re-hashed into the RFC 6962 tree, every
// checkpoint's signature and root are checked, consistency proofs are
// checked, and the first problem is pinpointed by sequence number.
//
// What can be pinpointed exactly: a missing (deleted) event, events out of
// order or duplicated, an event that no longer decodes, and a log cut
// short or rolled back (the first sequence missing). A modified event that
// still decodes is located by the signed checkpoints: it lies in the first
// checkpoint interval whose root no longer matches, so its precision is
// the checkpoint spacing (checkpoint.every; 1 gives per-event precision).
package verify

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/credmatrix/credmatrix/clients/auditclient/bundle"
	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/clients/auditclient/tree"

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
)

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
	// Checkpoints is the number of checkpoints checked.
	Checkpoints int `json:"checkpoints"`
	// VerifiedSize is the largest tree size proven by a valid checkpoint.
	VerifiedSize uint64 `json:"verified_size"`
	// Root is the root hash at VerifiedSize.
	Root []byte `json:"root,omitempty"`
	// Latest is the signed note of the largest valid checkpoint, for the
	// operator to keep.
	Latest []byte `json:"-"`
	// Unsigned is the number of events after the last checkpoint: they
	// verify as far as sequence and decoding go, but no signature covers
	// them yet.
	Unsigned uint64 `json:"unsigned,omitempty"`
	// Problem is the first problem found; nil means the log verifies.
	Problem *Problem `json:"problem,omitempty"`
	// DecodedEvents are the decoded events (when Options.KeepEvents).
	DecodedEvents []*auditv1.Event `json:"-"`
}

// OK reports whether the log verified.
func (r *Report) OK() bool { return r.Problem == nil }

// Options configure Bundle.
type Options struct {
	// Key is the trusted verifier of the log (required).
	Key *checkpoint.Verifier
	// Trusted is a signed checkpoint the operator kept earlier (optional):
	// the log must contain and extend it.
	Trusted []byte
	// KeepEvents returns the decoded events in the report, for replay.
	KeepEvents bool
}

// Bundle verifies b.
func Bundle(b *bundle.Bundle, opts Options) *Report {
	r := &Report{Events: uint64(len(b.Events))}
	h := rfc6962.DefaultHasher

	// 1. Every event decodes and sits at its own sequence.
	t := tree.New()
	hashes := make([]tree.Hash, 0, len(b.Events))
	if opts.KeepEvents {
		r.DecodedEvents = make([]*auditv1.Event, 0, len(b.Events))
	}
	var seqProblem *Problem
	events := make([]*auditv1.Event, len(b.Events))
	hashes = hashes[:len(b.Events)]
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
		seq := uint64(i)
		if e == nil {
			seqProblem = &Problem{Kind: Modified, Sequence: seq, End: seq + 1, Detail: "the event does not decode"}
			break
		}
		got := e.GetSequence()
		if got == seq {
			if opts.KeepEvents {
				r.DecodedEvents = append(r.DecodedEvents, e)
			}
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
			seqProblem = &Problem{Kind: Reordered, Sequence: seq, End: seq + 1, Detail: fmt.Sprintf("sequence %d is at position %d and position %d holds sequence %d: events were swapped or moved", seq, later, seq, got)}
		case got > seq:
			seqProblem = &Problem{Kind: Missing, Sequence: seq, End: seq + 1, Detail: fmt.Sprintf("the event after sequence %d is sequence %d: events %d to %d are missing", int64(seq)-1, got, seq, got-1)}
		default:
			seqProblem = &Problem{Kind: Reordered, Sequence: seq, End: seq + 1, Detail: fmt.Sprintf("position %d holds sequence %d again (duplicated or moved)", seq, got)}
		}
		break
	}
	t.Append(hashes...)

	// 2. Checkpoints: signature, size within the bundle, root.
	type good struct {
		size uint64
		root []byte
		note []byte
	}
	var cps []good
	var cpProblem *Problem
	for _, note := range b.Checkpoints {
		cp, err := opts.Key.Open(note)
		if err != nil {
			size := sizeOf(note)
			cpProblem = first(cpProblem, &Problem{Kind: BadSignature, Sequence: size, TreeSize: size, Detail: fmt.Sprintf("the checkpoint claiming tree size %d is not signed by the trusted key %s", size, opts.Key.KeyID())})
			continue
		}
		r.Checkpoints++
		cps = append(cps, good{cp.Size, cp.Root, note})
	}
	// Sort by size (the bundle should already be in order).
	for i := 1; i < len(cps); i++ {
		for j := i; j > 0 && cps[j].size < cps[j-1].size; j-- {
			cps[j], cps[j-1] = cps[j-1], cps[j]
		}
	}
	var prev uint64
	for _, cp := range cps {
		if cp.size > t.Size() {
			cpProblem = first(cpProblem, &Problem{Kind: Truncated, Sequence: t.Size(), TreeSize: cp.size,
				Detail: fmt.Sprintf("a signed checkpoint commits to %d events but the log holds %d: events %d to %d were removed", cp.size, t.Size(), t.Size(), cp.size-1)})
			break
		}
		root, _ := t.Root(cp.size)
		if !bytes.Equal(root, cp.root) {
			p := &Problem{Kind: Modified, Sequence: prev, End: cp.size, TreeSize: cp.size,
				Detail: fmt.Sprintf("the events do not hash to the signed root at tree size %d (the last matching checkpoint is at size %d): an event in %d..%d was modified", cp.size, prev, prev, cp.size-1)}
			if cp.size-prev == 1 {
				p.Detail = fmt.Sprintf("the event does not hash to the leaf the signed checkpoint at tree size %d commits to", cp.size)
			}
			cpProblem = first(cpProblem, p)
			break
		}
		prev = cp.size
		r.VerifiedSize, r.Root, r.Latest = cp.size, root, cp.note
	}

	// 3. Consistency proofs between signed roots.
	roots := map[uint64][]byte{}
	for _, cp := range cps {
		roots[cp.size] = cp.root
	}
	for _, p := range b.Proofs {
		r1, ok1 := roots[p.From]
		r2, ok2 := roots[p.To]
		if !ok1 || !ok2 {
			continue // a proof between unsigned sizes proves nothing
		}
		if err := proof.VerifyConsistency(h, p.From, p.To, p.Hashes, r1, r2); err != nil {
			cpProblem = first(cpProblem, &Problem{Kind: Inconsistent, Sequence: p.From, TreeSize: p.To,
				Detail: fmt.Sprintf("the signed checkpoints at sizes %d and %d are not consistent: the log was forked or rewritten after sequence %d", p.From, p.To, p.From-1)})
		}
	}

	// 4. The operator's kept checkpoint.
	var trustProblem *Problem
	if len(opts.Trusted) > 0 {
		cp, err := opts.Key.Open(opts.Trusted)
		switch {
		case err != nil:
			trustProblem = &Problem{Kind: BadSignature, Detail: "the kept checkpoint is not signed by the trusted key: " + err.Error()}
		case cp.Size > t.Size():
			trustProblem = &Problem{Kind: Rollback, Sequence: t.Size(), TreeSize: cp.Size,
				Detail: fmt.Sprintf("the log holds %d events but the kept checkpoint commits to %d: rolled back or truncated, events %d to %d are gone", t.Size(), cp.Size, t.Size(), cp.Size-1)}
		default:
			root, _ := t.Root(cp.Size)
			if !bytes.Equal(root, cp.Root) {
				trustProblem = &Problem{Kind: Rollback, Sequence: 0, End: cp.Size, TreeSize: cp.Size,
					Detail: fmt.Sprintf("the first %d events do not hash to the kept checkpoint's root: the log was rewritten below sequence %d", cp.Size, cp.Size)}
				// Narrow with the bundle's own checkpoints.
				for _, c := range cps {
					if c.size <= cp.Size && c.size > trustProblem.Sequence {
						if rr, _ := t.Root(c.size); bytes.Equal(rr, c.root) {
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
	if seqProblem != nil && cpProblem != nil && cpProblem.Kind == Modified && seqProblem.Sequence < cpProblem.End {
		cpProblem = nil
	}
	if seqProblem != nil && trustProblem != nil && trustProblem.Kind == Rollback && trustProblem.End > 0 && seqProblem.Sequence < trustProblem.End {
		trustProblem = nil
	}
	// The earliest problem wins: it is where the log first went wrong.
	r.Problem = earliest(seqProblem, cpProblem, trustProblem)
	switch {
	case r.Problem != nil:
	case r.VerifiedSize == 0 && t.Size() > 0:
		r.Problem = &Problem{Kind: Unverified, Sequence: 0, Detail: "no valid signed checkpoint covers the events"}
	case r.VerifiedSize < t.Size():
		r.Unsigned = t.Size() - r.VerifiedSize
	}
	return r
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

func first(have, p *Problem) *Problem {
	if have != nil {
		return have
	}
	return p
}

func earliest(ps ...*Problem) *Problem {
	var best *Problem
	for _, p := range ps {
		if p != nil && (best == nil || p.Sequence < best.Sequence) {
			best = p
		}
	}
	return best
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
		fmt.Fprintf(w, "verified: %d events, %d signed checkpoint(s), tree size %d, root %s\n",
			r.Events, r.Checkpoints, r.VerifiedSize, base64.StdEncoding.EncodeToString(r.Root))
		if hadKept {
			fmt.Fprintln(w, "consistent with the kept checkpoint: no rollback, no rewrite")
		}
		if r.Unsigned > 0 {
			fmt.Fprintf(w, "note: the last %d events are not covered by a signed checkpoint yet\n", r.Unsigned)
		}
		return
	}
	fmt.Fprintf(w, "NOT VERIFIED: %s\n", r.Problem)
	if p := r.Problem; p.Kind == Modified && p.End > p.Sequence+1 {
		fmt.Fprintf(w, "  the modified event is one of sequences %d to %d (the span between two signed checkpoints)\n", p.Sequence, p.End-1)
	} else {
		fmt.Fprintf(w, "  first bad sequence: %d\n", p.Sequence)
	}
	if r.VerifiedSize > 0 {
		fmt.Fprintf(w, "  events 0 to %d are proven by a signed checkpoint\n", r.VerifiedSize-1)
	}
}
