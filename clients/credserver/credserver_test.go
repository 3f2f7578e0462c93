package credserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/credmatrix/credmatrix/clients/credcache"
)

// TestSDKLoadsAndRefreshes points the real aws-sdk-go-v2 credential chain at
// the server and checks that it gets fresh credentials after expiry.
func TestSDKLoadsAndRefreshes(t *testing.T) {
	var n atomic.Int32
	fetch := func(context.Context) (credcache.Entry, error) {
		i := n.Add(1)
		return credcache.Entry{
			AccessKeyID: fmt.Sprintf("ASIATESTKEY%09d", i), SecretAccessKey: "secret", SessionToken: "token",
			Expiration: time.Now().Add(2 * time.Second),
		}, nil
	}
	s, err := New(fetch, WithWindow(0))
	if err != nil {
		t.Fatal(err)
	}
	url, err := s.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	t.Setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", url)
	t.Setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", s.AuthToken())
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"} {
		t.Setenv(k, "")
	}
	t.Setenv("AWS_CONFIG_FILE", t.TempDir()+"/none")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", t.TempDir()+"/none")

	ctx := context.Background()
	cfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion("eu-west-1"))
	if err != nil {
		t.Fatal(err)
	}
	first, err := cfg.Credentials.Retrieve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if first.AccessKeyID != "ASIATESTKEY000000001" || first.SessionToken != "token" || !first.CanExpire {
		t.Fatalf("first credentials %+v", first.AccessKeyID)
	}
	// The SDK caches until expiry; poll until it has fetched the next ones.
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := cfg.Credentials.Retrieve(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if c.AccessKeyID != first.AccessKeyID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the SDK never got fresh credentials after expiry")
		}
		time.Sleep(100 * time.Millisecond) // waiting for wall-clock expiry, not for a condition of ours
	}
}

func TestAuthorizationAndErrors(t *testing.T) {
	fail := errors.New("broker down")
	var broken atomic.Bool
	s, _ := New(func(context.Context) (credcache.Entry, error) {
		if broken.Load() {
			return credcache.Entry{}, fail
		}
		return credcache.Entry{AccessKeyID: "ASIAX", SecretAccessKey: "s", SessionToken: "t", Expiration: time.Now().Add(time.Hour)}, nil
	}, WithWindow(2*time.Hour)) // every request refreshes
	url, err := s.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	get := func(auth string) int {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		name   string
		auth   string
		broken bool
		want   int
	}{
		{"ok", s.AuthToken(), false, 200},
		{"no-token", "", false, 401},
		{"wrong-token", "Bearer " + s.AuthToken(), false, 401},
		{"broker-down-serves-still-valid", s.AuthToken(), true, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			broken.Store(tc.broken)
			if got := get(tc.auth); got != tc.want {
				t.Fatalf("status %d, want %d", got, tc.want)
			}
		})
	}
	if _, err := s.Start("0.0.0.0:0"); err == nil {
		t.Fatal("non-loopback listen accepted")
	}
}
