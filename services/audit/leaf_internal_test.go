package audit

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// TestWithSequenceIsMarshalEvent checks the committer's shortcut: the
// sequence prefix plus the serialisation without it is exactly the
// deterministic serialisation, for every detail kind and for sequences
// whose varints have 1 to 10 bytes.
func TestWithSequenceIsMarshalEvent(t *testing.T) {
	base := &auditv1.Event{
		Id: "id", Time: timestamppb.Now(), RecordedTime: timestamppb.Now(), Kind: auditv1.Kind_KIND_KEY_ENCRYPT,
		Decision: auditv1.Decision_DECISION_ALLOW, Reason: "r", Rule: "rule", SourceService: "spiffe://x", TraceId: "t",
		Actor:      &auditv1.Actor{Principal: "p", Claims: map[string]string{"b": "2", "a": "1", "c": "3"}},
		SecretRefs: []*auditv1.SecretRef{{Name: "session_token", HmacSha256: []byte{1, 2}, KeyId: "k"}},
	}
	details := map[string]func(e *auditv1.Event){
		"session": func(e *auditv1.Event) {
			e.Detail = &auditv1.Event_Session{Session: &auditv1.SessionDetail{AccountId: "1", Duration: durationpb.New(1), SessionTags: map[string]string{"x": "y", "a": "b"}}}
		},
		"key": func(e *auditv1.Event) {
			e.Detail = &auditv1.Event_Key{Key: &auditv1.KeyDetail{DataClass: "c", EncryptionContext: map[string]string{"z": "1", "a": "2"}}}
		},
		"policy": func(e *auditv1.Event) { e.Detail = &auditv1.Event_Policy{Policy: &auditv1.PolicyDetail{Sha256: "s"}} },
		"admin":  func(e *auditv1.Event) { e.Detail = &auditv1.Event_Admin{Admin: &auditv1.AdminDetail{Action: "a"}} },
		"none":   func(e *auditv1.Event) {},
	}
	for name, set := range details {
		for _, seq := range []uint64{0, 1, 127, 128, 1 << 20, 1<<63 + 5} {
			e := proto.CloneOf(base)
			set(e)
			rest, err := leaf.Marshal(e)
			if err != nil {
				t.Fatal(err)
			}
			e.Sequence = seq
			want, err := leaf.Marshal(e)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(prepared{rest: rest}.withSequence(seq), want); diff != "" {
				t.Errorf("%s/seq %d (-got +want):\n%s", name, seq, diff)
			}
		}
	}
}
