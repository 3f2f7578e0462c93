// Package bundle is the audit export format: one self-contained text file
// holding a log's events (their exact leaf bytes), its signed checkpoints
// and consistency proofs between them, so that an investigator can verify
// and replay the log offline with only the log's public key.
//
// The format is line-oriented, one record per line, fields separated by a
// single space, binary values in standard base64:
//
//	credmatrix-audit-bundle v1
//	origin <log origin>
//	key <signed-note verifier key>
//	checkpoint <base64 signed note>                      (any number, by size)
//	consistency <size1> <size2> <base64 hash>,...        (any number)
//	event <base64 deterministic protobuf of the event>   (in log order)
//	end <number of event lines>
//
// A bundle that holds a range of the log not starting at the first event
// (an archive of a sealed range, or an export of a log whose older events
// were archived and pruned) is version 2: the header says v2 and two
// records follow the key line:
//
//	first <sequence of the first event line>
//	start <base64 hash>,...    (the compact range of the tree of the first
//	                            <first> events: the roots of its perfect
//	                            subtrees, largest first; empty when first is 0)
//
// so that the events can be hashed into the tree from there on and checked
// against the signed checkpoints, without the events before them.
// A v1 reader refuses a v2 bundle by its header.
//
// Read checks the syntax and limits only; package verify judges the
// content. The reader is fuzzed (FuzzRead).
package bundle

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"strconv"
	"strings"
)

// Header is the first line of a bundle of the whole log (version 1).
const Header = "credmatrix-audit-bundle v1"

// HeaderV2 is the first line of a bundle of a range that starts after the
// first event (version 2: first and start records).
const HeaderV2 = "credmatrix-audit-bundle v2"

// Limits of the reader, so a hostile file cannot exhaust memory per line.
const (
	// MaxLine is the longest line accepted: a 64 KiB event in base64 plus
	// the keyword.
	MaxLine = 96 << 10
	// MaxProofHashes bounds one consistency proof (a tree of 2^64 leaves
	// needs at most 2*64).
	MaxProofHashes = 130
	// MaxStartHashes bounds a compact range (one hash per set bit of a
	// 64-bit size).
	MaxStartHashes = 64
)

// Bundle is an exported log.
type Bundle struct {
	// Origin is the log origin.
	Origin string
	// PublicKey is the verifier key the exporter saw. Verification must use
	// a key the investigator trusts, not this one.
	PublicKey string
	// Checkpoints are signed notes, in increasing tree size.
	Checkpoints [][]byte
	// Proofs are consistency proofs between tree sizes.
	Proofs []Proof
	// First is the sequence of the first event: 0 for a whole log, the
	// start of the range for an archive or a pruned log's export.
	First uint64
	// Start is the compact range of the tree of size First (the roots of
	// its perfect subtrees, largest first); empty when First is 0.
	Start [][]byte
	// Events are the leaf bytes (leaf.Marshal) of the events, in log order,
	// from sequence First.
	Events [][]byte
}

// End is the sequence after the last event: First + len(Events).
func (b *Bundle) End() uint64 { return b.First + uint64(len(b.Events)) }

// Proof is an RFC 6962 consistency proof from tree size From to To.
type Proof struct {
	// From and To are the tree sizes, 0 < From <= To.
	From, To uint64
	// Hashes is the proof, as proof.VerifyConsistency takes it.
	Hashes [][]byte
}

// Write writes b in the bundle format.
func (b *Bundle) Write(w io.Writer) error {
	bw, err := NewWriter(w, b)
	if err != nil {
		return err
	}
	for _, e := range b.Events {
		if err := bw.Event(e); err != nil {
			return err
		}
	}
	return bw.Close()
}

// Writer writes a bundle whose events come one at a time (a large archive
// streamed from a store), with memory independent of their number.
type Writer struct {
	bw     *bufio.Writer
	buf    []byte
	events uint64
	err    error
}

// NewWriter writes everything of head except its events (origin, key,
// range, checkpoints, proofs); Event then writes each event and Close the
// end line.
func NewWriter(w io.Writer, head *Bundle) (*Writer, error) {
	bw := bufio.NewWriterSize(w, 1<<16)
	enc := base64.StdEncoding
	if head.First == 0 && len(head.Start) == 0 {
		fmt.Fprintln(bw, Header)
	} else {
		fmt.Fprintln(bw, HeaderV2)
	}
	fmt.Fprintf(bw, "origin %s\n", head.Origin)
	fmt.Fprintf(bw, "key %s\n", head.PublicKey)
	if head.First != 0 || len(head.Start) != 0 {
		fmt.Fprintf(bw, "first %d\n", head.First)
		hs := make([]string, len(head.Start))
		for i, h := range head.Start {
			hs[i] = enc.EncodeToString(h)
		}
		fmt.Fprintf(bw, "start %s\n", strings.Join(hs, ","))
	}
	for _, cp := range head.Checkpoints {
		fmt.Fprintf(bw, "checkpoint %s\n", enc.EncodeToString(cp))
	}
	for _, p := range head.Proofs {
		hs := make([]string, len(p.Hashes))
		for i, h := range p.Hashes {
			hs[i] = enc.EncodeToString(h)
		}
		if _, err := fmt.Fprintf(bw, "consistency %d %d %s\n", p.From, p.To, strings.Join(hs, ",")); err != nil {
			return nil, err
		}
	}
	return &Writer{bw: bw, buf: make([]byte, 0, 1024)}, nil
}

// Event writes the next event's leaf bytes.
func (w *Writer) Event(data []byte) error {
	if w.err != nil {
		return w.err
	}
	w.buf = append(w.buf[:0], "event "...)
	w.buf = base64.StdEncoding.AppendEncode(w.buf, data)
	w.buf = append(w.buf, '\n')
	_, w.err = w.bw.Write(w.buf)
	w.events++
	return w.err
}

// Close writes the end line and flushes. It does not close the
// underlying writer.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	fmt.Fprintf(w.bw, "end %d\n", w.events)
	return w.bw.Flush()
}

// SyntaxError is a malformed bundle, naming the line.
type SyntaxError struct {
	// Line is the 1-based line number.
	Line int
	// Msg says what is wrong.
	Msg string
}

// Error names the line and the problem.
func (e *SyntaxError) Error() string { return fmt.Sprintf("bundle line %d: %s", e.Line, e.Msg) }

// ErrIncomplete means the bundle ended before its "end" line: the file was
// cut short (which verify reports as such, not as a log truncation).
var ErrIncomplete = errors.New("bundle is incomplete: no end line")

// Read parses a bundle.
func Read(r io.Reader) (*Bundle, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1<<16), MaxLine)
	b := &Bundle{}
	line := 0
	syntax := func(format string, args ...any) error {
		return &SyntaxError{Line: line, Msg: fmt.Sprintf(format, args...)}
	}
	enc := base64.StdEncoding
	var seenOrigin, seenKey, ended, v2, seenFirst, seenStart bool
	for sc.Scan() {
		line++
		text := sc.Bytes()
		if line == 1 {
			switch string(text) {
			case Header:
			case HeaderV2:
				v2 = true
			default:
				return nil, syntax("not a credmatrix audit bundle (want %q or %q)", Header, HeaderV2)
			}
			continue
		}
		if ended {
			return nil, syntax("data after the end line")
		}
		kw, rest, _ := bytes.Cut(text, []byte(" "))
		switch string(kw) {
		case "origin":
			if seenOrigin || len(rest) == 0 {
				return nil, syntax("origin: repeated or empty")
			}
			b.Origin, seenOrigin = string(rest), true
		case "key":
			if seenKey || len(rest) == 0 {
				return nil, syntax("key: repeated or empty")
			}
			b.PublicKey, seenKey = string(rest), true
		case "first":
			n, err := strconv.ParseUint(string(rest), 10, 64)
			if !v2 || seenFirst || err != nil || len(b.Events) > 0 {
				return nil, syntax("first: only once, in a v2 bundle, before the events, a sequence number")
			}
			b.First, seenFirst = n, true
		case "start":
			if !v2 || seenStart || len(b.Events) > 0 {
				return nil, syntax("start: only once, in a v2 bundle, before the events")
			}
			seenStart = true
			if len(rest) == 0 {
				continue
			}
			hs := strings.Split(string(rest), ",")
			if len(hs) > MaxStartHashes {
				return nil, syntax("start: more than %d hashes", MaxStartHashes)
			}
			for _, h := range hs {
				d, err := enc.DecodeString(h)
				if err != nil || len(d) != 32 {
					return nil, syntax("start: hash is not 32 bytes of base64")
				}
				b.Start = append(b.Start, d)
			}
		case "checkpoint":
			cp, err := enc.DecodeString(string(rest))
			if err != nil || len(cp) == 0 {
				return nil, syntax("checkpoint: not base64")
			}
			b.Checkpoints = append(b.Checkpoints, cp)
		case "consistency":
			f := strings.Split(string(rest), " ")
			if len(f) != 3 {
				return nil, syntax("consistency: want <size1> <size2> <hashes>")
			}
			from, err1 := strconv.ParseUint(f[0], 10, 64)
			to, err2 := strconv.ParseUint(f[1], 10, 64)
			if err1 != nil || err2 != nil || from == 0 || from > to {
				return nil, syntax("consistency: sizes must satisfy 0 < size1 <= size2")
			}
			p := Proof{From: from, To: to}
			if f[2] != "" {
				hs := strings.Split(f[2], ",")
				if len(hs) > MaxProofHashes {
					return nil, syntax("consistency: more than %d hashes", MaxProofHashes)
				}
				for _, h := range hs {
					d, err := enc.DecodeString(h)
					if err != nil || len(d) != 32 {
						return nil, syntax("consistency: hash is not 32 bytes of base64")
					}
					p.Hashes = append(p.Hashes, d)
				}
			}
			b.Proofs = append(b.Proofs, p)
		case "event":
			d := make([]byte, enc.DecodedLen(len(rest)))
			n, err := enc.Decode(d, rest)
			if err != nil {
				return nil, syntax("event %d: not base64", len(b.Events))
			}
			b.Events = append(b.Events, d[:n])
		case "end":
			n, err := strconv.ParseUint(string(rest), 10, 64)
			if err != nil || n != uint64(len(b.Events)) {
				return nil, syntax("end: says %q events, the bundle holds %d", rest, len(b.Events))
			}
			ended = true
		default:
			return nil, syntax("unknown record %q", truncate(string(kw), 32))
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, &SyntaxError{Line: line + 1, Msg: fmt.Sprintf("longer than %d bytes", MaxLine)}
		}
		return nil, fmt.Errorf("read bundle: %w", err)
	}
	switch {
	case line == 0:
		return nil, &SyntaxError{Line: 1, Msg: "empty file"}
	case !seenOrigin || !seenKey:
		return nil, &SyntaxError{Line: line, Msg: "origin and key lines are required"}
	case v2 && (!seenFirst || !seenStart):
		return nil, &SyntaxError{Line: line, Msg: "a v2 bundle needs first and start lines"}
	case v2 && bits.OnesCount64(b.First) != len(b.Start):
		return nil, &SyntaxError{Line: line, Msg: fmt.Sprintf("start: the tree of %d events has %d perfect subtrees, the bundle gives %d hashes", b.First, bits.OnesCount64(b.First), len(b.Start))}
	case !ended:
		return nil, ErrIncomplete
	}
	return b, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
