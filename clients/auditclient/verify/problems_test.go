package verify_test

import (
	"bytes"
	"crypto/sha256"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"

	"github.com/google/go-cmp/cmp"

	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/clients/auditclient/verify"
)

// TestGoesOnPastUndecodable: two events that no longer decode are both
// reported, by sequence, and nothing else is blamed for them.
func TestGoesOnPastUndecodable(t *testing.T) {
	b, key, kept := readGolden(t)
	for _, seq := range []int{2, 9} {
		b.Events[seq] = []byte{0x0a, 0xff, 0x01} // truncated field: does not decode
	}
	r := verify.Bundle(b, verify.Options{Key: key, Trusted: kept, KeepEvents: true})
	type got struct {
		Kind verify.ProblemKind
		Seq  uint64
	}
	var problems []got
	for _, p := range r.Problems {
		problems = append(problems, got{p.Kind, p.Sequence})
	}
	if diff := cmp.Diff(problems, []got{{verify.Modified, 2}, {verify.Modified, 9}}); diff != "" {
		t.Errorf("problems (-got +want):\n%s", diff)
	}
}

// goldenSigner is the golden log's signer (its key comes from a fixed
// seed; see services/audit/audittest).
func goldenSigner(t *testing.T) *checkpoint.Signer {
	t.Helper()
	seed := sha256.Sum256([]byte("credmatrix golden audit log: test key, never use elsewhere"))
	skey, _, err := note.GenerateKey(bytes.NewReader(seed[:]), "golden.credmatrix.local/audit")
	if err != nil {
		t.Fatal(err)
	}
	s, err := checkpoint.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestFork: a kept checkpoint and the log's checkpoint of the same tree
// size, both validly signed, with different roots: a fork naming both,
// not a rollback of an empty range.
func TestFork(t *testing.T) {
	b, key, _ := readGolden(t)
	forged, err := goldenSigner(t).Sign(8, bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	r := verify.Bundle(b, verify.Options{Key: key, Trusted: forged})
	if r.OK() || r.Problem.Kind != verify.Fork || r.Problem.Sequence != 8 || !strings.Contains(r.Problem.Detail, "kept BwcH") {
		t.Fatalf("problem = %v, want a fork at 8 naming both roots", r.Problem)
	}
	// Two checkpoints of one size inside the log are a fork too.
	b.Checkpoints = append(b.Checkpoints, forged)
	r = verify.Bundle(b, verify.Options{Key: key})
	if r.OK() || r.Problem.Kind != verify.Fork || r.Problem.Sequence != 8 {
		t.Fatalf("problem = %v, want a fork at 8", r.Problem)
	}
}
