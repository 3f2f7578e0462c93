package keyguardmetrics_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/credmatrix/credmatrix/services/keyguard/keyguardmetrics"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
)

var rings = []keyguard.Ring{{DataClass: "confidential", Region: "eu-west-1"}}

type auditor struct{}

func (auditor) Append(context.Context, *auditv1.Event) (*auditv1.AppendResult, error) {
	return &auditv1.AppendResult{}, nil
}

type batchAuditor struct{ auditor }

func (batchAuditor) AppendBatch(_ context.Context, evs []*auditv1.Event) ([]*auditv1.AppendResult, error) {
	return make([]*auditv1.AppendResult, len(evs)), nil
}

// series renders every credmatrix series of reg as "name{k=v,...} value".
func series(t *testing.T, reg *prometheus.Registry) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, lp := range m.GetLabel() {
				ls = append(ls, lp.GetName()+"="+lp.GetValue())
			}
			v := m.GetCounter().GetValue()
			if m.Histogram != nil {
				v = float64(m.GetHistogram().GetSampleCount())
			}
			out = append(out, fmt.Sprintf("%s{%s} %v", mf.GetName(), strings.Join(ls, ","), v))
		}
	}
	return out
}

func keyEvent(k auditv1.Kind, d auditv1.Decision, class, region string) *auditv1.Event {
	return &auditv1.Event{Kind: k, Decision: d, Detail: &auditv1.Event_Key{Key: &auditv1.KeyDetail{
		DataClass: class, Region: region, GrantId: "grant-secretish", EncryptionContext: map[string]string{"tenant": "t-1"},
	}}}
}

func TestAuditorCounts(t *testing.T) {
	tests := []struct {
		name string
		ev   *auditv1.Event
		want []string
	}{
		{"encrypt/allow", keyEvent(auditv1.Kind_KIND_KEY_ENCRYPT, auditv1.Decision_DECISION_ALLOW, "confidential", "eu-west-1"), []string{
			"credmatrix_keyguard_key_operations_total{data_class=confidential,decision=allow,op=encrypt,region=eu-west-1} 1",
		}},
		{"decrypt/deny", keyEvent(auditv1.Kind_KIND_KEY_DECRYPT, auditv1.Decision_DECISION_DENY, "confidential", "eu-west-1"), []string{
			"credmatrix_keyguard_grant_denials_total{data_class=confidential,op=decrypt,region=eu-west-1} 1",
			"credmatrix_keyguard_key_operations_total{data_class=confidential,decision=deny,op=decrypt,region=eu-west-1} 1",
		}},
		{"attack/unconfigured-ring-is-not-a-label", keyEvent(auditv1.Kind_KIND_KEY_ENCRYPT, auditv1.Decision_DECISION_DENY, "attacker-class", "mars-north-1"), []string{
			"credmatrix_keyguard_grant_denials_total{data_class=unknown,op=encrypt,region=unknown} 1",
			"credmatrix_keyguard_key_operations_total{data_class=unknown,decision=deny,op=encrypt,region=unknown} 1",
		}},
		{"attack/configured-class-in-other-region", keyEvent(auditv1.Kind_KIND_KEY_ENCRYPT, auditv1.Decision_DECISION_DENY, "confidential", "attacker-region"), []string{
			"credmatrix_keyguard_grant_denials_total{data_class=unknown,op=encrypt,region=unknown} 1",
			"credmatrix_keyguard_key_operations_total{data_class=unknown,decision=deny,op=encrypt,region=unknown} 1",
		}},
		{"grant-create", keyEvent(auditv1.Kind_KIND_GRANT_CREATE, auditv1.Decision_DECISION_ALLOW, "confidential", "eu-west-1"), []string{
			"credmatrix_keyguard_key_operations_total{data_class=confidential,decision=allow,op=grant_create,region=eu-west-1} 1",
		}},
		{"other-kind-ignored", &auditv1.Event{Kind: auditv1.Kind_KIND_SESSION_ISSUE, Decision: auditv1.Decision_DECISION_ALLOW}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			a := keyguardmetrics.New(reg, rings).Auditor(batchAuditor{})
			if _, err := a.(keyguard.BatchAuditor).AppendBatch(context.Background(), []*auditv1.Event{tc.ev}); err != nil {
				t.Fatal(err)
			}
			want := append([]string{"credmatrix_keyguard_audit_append_duration_seconds{call=append_batch} 1"}, tc.want...)
			if diff := cmp.Diff(series(t, reg), want); diff != "" {
				t.Errorf("series (-got +want):\n%s", diff)
			}
		})
	}
}

type downAuditor struct{}

func (downAuditor) Append(context.Context, *auditv1.Event) (*auditv1.AppendResult, error) {
	return nil, errors.New("audit unavailable")
}

// TestAuditorFailure: a failed append is timed and counted as an audit
// error, and its operation is not counted (the request failed closed).
func TestAuditorFailure(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := keyguardmetrics.New(reg, rings).Auditor(downAuditor{})
	if _, err := a.Append(context.Background(), keyEvent(auditv1.Kind_KIND_KEY_ENCRYPT, auditv1.Decision_DECISION_ALLOW, "confidential", "eu-west-1")); err == nil {
		t.Fatal("error swallowed")
	}
	want := []string{
		"credmatrix_keyguard_audit_append_duration_seconds{call=append} 1",
		"credmatrix_keyguard_audit_append_errors_total{call=append} 1",
	}
	if diff := cmp.Diff(series(t, reg), want); diff != "" {
		t.Errorf("series (-got +want):\n%s", diff)
	}
}

func TestAuditorKeepsBatchAuditor(t *testing.T) {
	m := keyguardmetrics.New(nil, rings)
	for _, tc := range []struct {
		name string
		a    keyguard.Auditor
	}{{"plain", auditor{}}, {"batch", batchAuditor{}}} {
		t.Run(tc.name, func(t *testing.T) {
			_, want := tc.a.(keyguard.BatchAuditor)
			_, got := m.Auditor(tc.a).(keyguard.BatchAuditor)
			if got != want {
				t.Errorf("BatchAuditor: wrapped %v, original %v", got, want)
			}
		})
	}
}

type failingBackend struct{ err error }

func (b failingBackend) Primary(context.Context, string, string) (uint32, error) { return 1, b.err }
func (b failingBackend) Wrap(context.Context, string, string, uint32, []byte) ([]byte, error) {
	return []byte("wrapped"), b.err
}
func (b failingBackend) Unwrap(context.Context, string, string, uint32, []byte) ([]byte, error) {
	return []byte("key"), b.err
}
func (b failingBackend) Rotate(context.Context, string, string) (uint32, error) { return 2, b.err }
func (b failingBackend) Refresh(context.Context) error                          { return nil }
func (b failingBackend) Versions(context.Context, string, string) ([]keyguard.VersionInfo, error) {
	return nil, b.err
}

func TestBackendErrors(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want []string
	}{
		{"ok", nil, []string{
			"credmatrix_keyguard_kek_request_duration_seconds{backend=awskms,call=unwrap,data_class=confidential,region=eu-west-1} 1",
		}},
		{"unavailable", fmt.Errorf("kms throttled: %w", keyguard.ErrBackendUnavailable), []string{
			"credmatrix_keyguard_kek_errors_total{backend=awskms,call=unwrap,kind=unavailable} 1",
			"credmatrix_keyguard_kek_request_duration_seconds{backend=awskms,call=unwrap,data_class=confidential,region=eu-west-1} 1",
		}},
		{"tampered", fmt.Errorf("bad tag: %w", keyguard.ErrUnwrap), []string{
			"credmatrix_keyguard_kek_errors_total{backend=awskms,call=unwrap,kind=unwrap} 1",
			"credmatrix_keyguard_kek_request_duration_seconds{backend=awskms,call=unwrap,data_class=confidential,region=eu-west-1} 1",
		}},
		{"other", errors.New("AccessDeniedException: arn:aws:kms:..."), []string{
			"credmatrix_keyguard_kek_errors_total{backend=awskms,call=unwrap,kind=error} 1",
			"credmatrix_keyguard_kek_request_duration_seconds{backend=awskms,call=unwrap,data_class=confidential,region=eu-west-1} 1",
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			b := keyguardmetrics.New(reg, rings).Backend("awskms", failingBackend{err: tc.err})
			key, err := b.Unwrap(context.Background(), "confidential", "eu-west-1", 1, []byte("w"))
			if !errors.Is(err, tc.err) || string(key) != "key" {
				t.Fatalf("Unwrap = %q, %v: not passed through", key, err)
			}
			if diff := cmp.Diff(series(t, reg), tc.want); diff != "" {
				t.Errorf("series (-got +want):\n%s", diff)
			}
		})
	}
}
