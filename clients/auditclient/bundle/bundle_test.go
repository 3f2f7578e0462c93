package bundle_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/credmatrix/credmatrix/clients/auditclient/bundle"
)

func sample() *bundle.Bundle {
	return &bundle.Bundle{
		Origin:      "example.com/log",
		PublicKey:   "example.com/log+01234567+AQID",
		Checkpoints: [][]byte{[]byte("example.com/log\n2\nAAAA\n\n— sig\n")},
		Proofs:      []bundle.Proof{{From: 1, To: 2, Hashes: [][]byte{bytes.Repeat([]byte{1}, 32)}}, {From: 2, To: 2}},
		Events:      [][]byte{{0x12, 0x01, 'a'}, {}, {0x08, 0x02}},
	}
}

func TestRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	if err := sample().Write(&buf); err != nil {
		t.Fatal(err)
	}
	got, err := bundle.Read(&buf)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if diff := cmp.Diff(got, sample(), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("round trip (-got +want):\n%s", diff)
	}
}

// sampleRange is a v2 bundle: events from sequence 5 (5 = 4 + 1, so the
// tree before them has two perfect subtrees).
func sampleRange() *bundle.Bundle {
	b := sample()
	b.First = 5
	b.Start = [][]byte{bytes.Repeat([]byte{2}, 32), bytes.Repeat([]byte{3}, 32)}
	return b
}

func TestRoundTripRange(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleRange().Write(&buf); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(buf.String(), bundle.HeaderV2+"\n") {
		t.Fatalf("a range bundle starts %q, want the v2 header", buf.String()[:30])
	}
	got, err := bundle.Read(&buf)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if diff := cmp.Diff(got, sampleRange(), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("round trip (-got +want):\n%s", diff)
	}
	if got.End() != 8 {
		t.Errorf("End() = %d, want 8", got.End())
	}
}

func TestReadRejectsRange(t *testing.T) {
	var buf bytes.Buffer
	sampleRange().Write(&buf)
	good := buf.String()
	var v1 bytes.Buffer
	sample().Write(&v1)
	for _, tc := range []struct {
		name, text string
	}{
		{"first/in-v1", strings.Replace(v1.String(), "key ", "first 5\nkey ", 1)},
		{"first/twice", strings.Replace(good, "first 5\n", "first 5\nfirst 5\n", 1)},
		{"first/not-a-number", strings.Replace(good, "first 5", "first -5", 1)},
		{"first/missing", strings.Replace(good, "first 5\n", "", 1)},
		{"start/missing", good[:strings.Index(good, "start ")] + good[strings.Index(good, "checkpoint "):]},
		{"start/count", strings.Replace(good, "first 5", "first 7", 1)},
		{"start/short-hash", strings.Replace(good, "start ", "start AAAA,", 1)},
		{"start/after-events", strings.Replace(good, "end 3", "start \nend 3", 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := bundle.Read(strings.NewReader(tc.text))
			var se *bundle.SyntaxError
			if !errors.As(err, &se) {
				t.Errorf("Read = %v, want a SyntaxError", err)
			}
		})
	}
}

func TestReadRejects(t *testing.T) {
	var buf bytes.Buffer
	sample().Write(&buf)
	good := buf.String()
	for _, tc := range []struct {
		name, text string
		line       int
	}{
		{"header/missing", strings.Replace(good, bundle.Header, "hello", 1), 1},
		{"empty", "", 1},
		{"event/not-base64", strings.Replace(good, "event EgFh", "event E!Fh", 1), 7},
		{"end/count", strings.Replace(good, "end 3", "end 2", 1), 10},
		{"end/after", good + "event AA==\n", 11},
		{"unknown", strings.Replace(good, "origin ", "orign ", 1), 2},
		{"consistency/zero", strings.Replace(good, "consistency 1 2", "consistency 0 2", 1), 5},
		{"consistency/short-hash", strings.Replace(good, "consistency 1 2 ", "consistency 1 2 AAAA", 1), 5},
		{"line/too-long", strings.Replace(good, "event EgFh", "event "+strings.Repeat("A", bundle.MaxLine), 1), 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := bundle.Read(strings.NewReader(tc.text))
			var se *bundle.SyntaxError
			if !errors.As(err, &se) || se.Line != tc.line {
				t.Errorf("Read = %v, want a SyntaxError on line %d", err, tc.line)
			}
		})
	}
	t.Run("incomplete", func(t *testing.T) {
		cut := good[:strings.Index(good, "end ")]
		if _, err := bundle.Read(strings.NewReader(cut)); !errors.Is(err, bundle.ErrIncomplete) {
			t.Errorf("Read of a cut bundle = %v, want ErrIncomplete", err)
		}
	})
}

// FuzzRead checks that the reader never panics and that whatever it
// accepts writes back to something it reads the same.
func FuzzRead(f *testing.F) {
	var buf bytes.Buffer
	sample().Write(&buf)
	f.Add(buf.Bytes())
	f.Add([]byte(bundle.Header + "\norigin o\nkey k\nend 0\n"))
	buf.Reset()
	sampleRange().Write(&buf)
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := bundle.Read(bytes.NewReader(data))
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := b.Write(&out); err != nil {
			t.Fatal(err)
		}
		again, err := bundle.Read(&out)
		if err != nil {
			t.Fatalf("re-reading a written bundle: %v", err)
		}
		if diff := cmp.Diff(again, b, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("round trip (-got +want):\n%s", diff)
		}
	})
}
