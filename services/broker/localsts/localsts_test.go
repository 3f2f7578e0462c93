package localsts_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/credmatrix/credmatrix/services/broker/localsts"
	"github.com/google/go-cmp/cmp"
)

func newProvider(t *testing.T, now *time.Time) *localsts.Provider {
	t.Helper()
	key := make([]byte, localsts.KeySize)
	_, _ = rand.Read(key)
	p, err := localsts.New(key, localsts.WithClock(func() time.Time { return *now }))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var spec = broker.SessionSpec{
	SessionID:      "0b0f6a4e-7d5c-4a53-9d0e-3c1e7a6b2f10",
	AccountID:      "111111111111",
	RoleARN:        "arn:aws:iam::111111111111:role/deploy",
	RoleName:       "deploy",
	Region:         "eu-west-1",
	SessionName:    "acme-app@42",
	SourceIdentity: "cm-0b0f6a4e-7d5c-4a53-9d0e-3c1e7a6b2f10",
	Subject:        "repo:acme/app:ref:refs/heads/main",
	Duration:       time.Hour,
	Tags:           map[string]string{"repository": "acme/app"},
}

func TestIssueAndIntrospect(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	p := newProvider(t, &now)
	creds, err := p.Issue(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^ASIA[A-Z2-7]{16}$`).MatchString(creds.AccessKeyID) {
		t.Errorf("AccessKeyID = %q, want ^ASIA[A-Z2-7]{16}$", creds.AccessKeyID)
	}
	if !regexp.MustCompile(`^[A-Za-z0-9+/]{40}$`).MatchString(creds.SecretAccessKey) {
		t.Errorf("SecretAccessKey has the wrong shape (len %d)", len(creds.SecretAccessKey))
	}
	if !creds.Expiration.Equal(now.Add(time.Hour)) {
		t.Errorf("Expiration = %v, want %v", creds.Expiration, now.Add(time.Hour))
	}

	info, err := p.Introspect(creds.AccessKeyID, creds.SessionToken)
	if err != nil {
		t.Fatal(err)
	}
	want := &broker.SessionInfo{
		SessionID: spec.SessionID, AccessKeyID: creds.AccessKeyID, AccountID: spec.AccountID,
		RoleARN: spec.RoleARN, RoleName: "deploy", Region: "eu-west-1", Subject: spec.Subject,
		IssuedAt: now, Expiration: now.Add(time.Hour), Tags: spec.Tags,
	}
	if diff := cmp.Diff(info, want); diff != "" {
		t.Errorf("Introspect (-got +want):\n%s", diff)
	}

	now = now.Add(2 * time.Hour)
	info, err = p.Introspect(creds.AccessKeyID, creds.SessionToken)
	if err != nil || !info.Expired {
		t.Errorf("Introspect after expiry = %+v, %v; want Expired", info, err)
	}
}

func TestIssueUniqueKeys(t *testing.T) {
	now := time.Now()
	p := newProvider(t, &now)
	seen := map[string]bool{}
	for range 100 {
		c, err := p.Issue(context.Background(), spec)
		if err != nil {
			t.Fatal(err)
		}
		if seen[c.AccessKeyID] || seen[c.SecretAccessKey] {
			t.Fatal("repeated access key id or secret")
		}
		seen[c.AccessKeyID], seen[c.SecretAccessKey] = true, true
	}
}

func TestIntrospectRefuses(t *testing.T) {
	now := time.Now()
	p := newProvider(t, &now)
	creds, err := p.Issue(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	other, err := p.Issue(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	payload, sig, _ := strings.Cut(creds.SessionToken, ".")
	body, _ := base64.RawURLEncoding.DecodeString(payload)
	forged := base64.RawURLEncoding.EncodeToString(bytes.Replace(body, []byte("111111111111"), []byte("999999999999"), 1)) + "." + sig
	tests := []struct {
		name, akid, token string
	}{
		{"tampered-payload", creds.AccessKeyID, forged},
		{"tampered-signature", creds.AccessKeyID, payload + "." + base64.RawURLEncoding.EncodeToString([]byte("not the mac, not the mac, not th"))},
		{"other-access-key", other.AccessKeyID, creds.SessionToken},
		{"no-signature", creds.AccessKeyID, payload},
		{"garbage", creds.AccessKeyID, "!!!.???"},
		{"other-provider", creds.AccessKeyID, func() string {
			c, err := newProvider(t, &now).Issue(context.Background(), spec)
			if err != nil {
				t.Fatal(err)
			}
			return c.SessionToken
		}()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := p.Introspect(tc.akid, tc.token); !errors.Is(err, broker.ErrSessionNotFound) {
				t.Errorf("Introspect error = %v, want ErrSessionNotFound", err)
			}
		})
	}
}

func TestIssueRejects(t *testing.T) {
	now := time.Now()
	p := newProvider(t, &now)
	bad := spec
	bad.Duration = 13 * time.Hour
	if _, err := p.Issue(context.Background(), bad); err == nil {
		t.Error("Issue accepted 13h")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.Issue(ctx, spec); !errors.Is(err, context.Canceled) {
		t.Errorf("Issue with cancelled ctx = %v", err)
	}
	if _, err := localsts.New(make([]byte, 16)); err == nil {
		t.Error("New accepted a 16-byte key")
	}
}

func TestCredentialsRedacted(t *testing.T) {
	now := time.Now()
	creds, err := newProvider(t, &now).Issue(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("issued", "creds", creds)
	session := broker.Session{ID: "x", Credentials: creds}
	for name, out := range map[string]string{
		"%v": fmt.Sprintf("%v", creds), "%+v": fmt.Sprintf("%+v", creds), "%#v": fmt.Sprintf("%#v", creds),
		//lint:ignore S1025 the test checks what fmt's %s verb prints
		"%s": fmt.Sprintf("%s", creds), "nested %+v": fmt.Sprintf("%+v", session), "nested %#v": fmt.Sprintf("%#v", &session),
		"slog": logged.String(),
	} {
		if strings.Contains(out, creds.SecretAccessKey) || strings.Contains(out, creds.SessionToken) {
			t.Errorf("%s leaks a secret: %s", name, out)
		}
		if !strings.Contains(out, creds.AccessKeyID) || !strings.Contains(out, "[redacted]") {
			t.Errorf("%s = %s, want the access key id and [redacted]", name, out)
		}
	}
}
