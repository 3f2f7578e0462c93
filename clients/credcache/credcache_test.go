package credcache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestGetOrFetch(t *testing.T) {
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	c, err := New(filepath.Join(t.TempDir(), "c"), WithClock(clock), WithWindow(5*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	var fetches int
	fetch := func(context.Context) (Entry, error) {
		fetches++
		return Entry{AccessKeyID: fmt.Sprintf("ASIA%d", fetches), SecretAccessKey: "s", SessionToken: "t", Expiration: now.Add(time.Hour)}, nil
	}
	ctx := context.Background()
	e, hit, err := c.GetOrFetch(ctx, "k", fetch)
	if err != nil || hit || e.AccessKeyID != "ASIA1" {
		t.Fatalf("first: %v %v %v", e, hit, err)
	}
	e, hit, _ = c.GetOrFetch(ctx, "k", fetch)
	if !hit || e.AccessKeyID != "ASIA1" {
		t.Fatalf("second call must hit: %v %v", e, hit)
	}
	// Inside the refresh window: refreshed, not served.
	now = now.Add(56 * time.Minute)
	e, hit, _ = c.GetOrFetch(ctx, "k", fetch)
	if hit || e.AccessKeyID != "ASIA2" {
		t.Fatalf("inside the window: %v %v", e, hit)
	}
	info, _ := os.Stat(filepath.Join(c.dir, "k.json"))
	if info.Mode().Perm() != 0o600 {
		t.Fatalf("cache file mode %v", info.Mode().Perm())
	}
	// Past expiry nothing is served, even with a zero window.
	c0, _ := New(c.dir, WithClock(clock), WithWindow(0))
	now = now.Add(2 * time.Hour)
	if _, ok := c0.Get("k"); ok {
		t.Fatal("expired entry served")
	}
	// A fetch error passes through and nothing is stored.
	boom := errors.New("denied")
	if _, _, err := c.GetOrFetch(ctx, "k2", func(context.Context) (Entry, error) { return Entry{}, boom }); !errors.Is(err, boom) {
		t.Fatalf("fetch error: %v", err)
	}
	if _, ok := c.Get("k2"); ok {
		t.Fatal("failed fetch cached")
	}
}

func TestConcurrentCallersFetchOnce(t *testing.T) {
	c, err := New(t.TempDir() + "/c")
	if err != nil {
		t.Fatal(err)
	}
	var fetches atomic.Int32
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := c.GetOrFetch(context.Background(), "k", func(context.Context) (Entry, error) {
				fetches.Add(1)
				return Entry{AccessKeyID: "ASIA", Expiration: time.Now().Add(time.Hour)}, nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := fetches.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}
}

func TestRefusesSharedDirAndRedacts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "open")
	os.MkdirAll(dir, 0o755)
	os.Chmod(dir, 0o755)
	if _, err := New(dir); err == nil || !strings.Contains(err.Error(), "other users") {
		t.Fatalf("world-readable dir: %v", err)
	}
	e := Entry{AccessKeyID: "ASIAX", SecretAccessKey: "topsecret", SessionToken: "tokentoken"}
	for _, s := range []string{fmt.Sprint(e), fmt.Sprintf("%+v %#v", e, e)} {
		if strings.Contains(s, "topsecret") || strings.Contains(s, "tokentoken") {
			t.Fatalf("leak: %s", s)
		}
	}
	if Key("a", "bc") == Key("ab", "c") {
		t.Fatal("Key must not be ambiguous")
	}
}
