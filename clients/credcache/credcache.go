// Package credcache caches AWS session credentials between credential_process
// invocations: the AWS CLI and SDKs run `credmatrix creds` for every
// command, and a CI job must not ask the broker (and write an audit event)
// each time.
//
// One file per key (issuer, subject, role, account, region, ...) under the
// user's cache directory, mode 0600 in a 0700 directory, written atomically.
// An entry is served only while it is valid beyond the refresh window, and
// never after its expiry. Concurrent invocations take a file lock, so a
// burst of them produces one issuance.
package credcache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gofrs/flock"
)

// DefaultWindow is how long before expiry an entry is refreshed.
const DefaultWindow = 5 * time.Minute

// Entry is one cached session.
type Entry struct {
	AccessKeyID     string    `json:"AccessKeyId"`
	SecretAccessKey string    `json:"SecretAccessKey"`
	SessionToken    string    `json:"SessionToken"`
	Expiration      time.Time `json:"Expiration"`
	Region          string    `json:"Region,omitempty"`
}

// String implements fmt.Stringer without the secrets.
func (e Entry) String() string {
	return fmt.Sprintf("Entry{%s, secret:[redacted], token:[redacted], expires %s}", e.AccessKeyID, e.Expiration.Format(time.RFC3339))
}

// GoString implements fmt.GoStringer without the secrets.
func (e Entry) GoString() string { return e.String() }

// Cache is a directory of entries.
type Cache struct {
	dir    string
	window time.Duration
	now    func() time.Time
}

// Option configures a Cache.
type Option func(*Cache)

// WithWindow sets the refresh window (DefaultWindow otherwise).
func WithWindow(d time.Duration) Option { return func(c *Cache) { c.window = d } }

// WithClock replaces time.Now.
func WithClock(now func() time.Time) Option { return func(c *Cache) { c.now = now } }

// DefaultDir is credmatrix's folder in the user cache directory.
func DefaultDir() (string, error) {
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("credential cache: %w", err)
	}
	return filepath.Join(d, "credmatrix", "credentials"), nil
}

// New opens (creating) the cache directory dir.
func New(dir string, opts ...Option) (*Cache, error) {
	c := &Cache{dir: dir, window: DefaultWindow, now: time.Now}
	for _, o := range opts {
		o(c)
	}
	if c.window < 0 {
		return nil, errors.New("credential cache: refresh window must not be negative")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("credential cache: %w", err)
	}
	info, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("credential cache: %w", err)
	}
	if info.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("credential cache %s: accessible by other users (mode %v); chmod 700 it", dir, info.Mode().Perm())
	}
	return c, nil
}

// Key derives a file-safe cache key from the parts that identify a session.
func Key(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:%s;", len(p), p)
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

func (c *Cache) path(key string) string { return filepath.Join(c.dir, key+".json") }

// fresh reports whether e can be served now.
func (c *Cache) fresh(e Entry) bool {
	return e.AccessKeyID != "" && c.now().Add(c.window).Before(e.Expiration)
}

// Get returns the entry for key when it is fresh.
func (c *Cache) Get(key string) (Entry, bool) {
	b, err := os.ReadFile(c.path(key))
	if err != nil {
		return Entry{}, false
	}
	var e Entry
	if json.Unmarshal(b, &e) != nil || !c.fresh(e) {
		return Entry{}, false
	}
	return e, true
}

// GetOrFetch returns the fresh entry for key, or calls fetch, stores and
// returns its result. hit says whether the entry came from the cache.
// Concurrent callers (processes included) for the same key wait for one
// fetch.
func (c *Cache) GetOrFetch(ctx context.Context, key string, fetch func(context.Context) (Entry, error)) (e Entry, hit bool, err error) {
	if e, ok := c.Get(key); ok {
		return e, true, nil
	}
	lock := flock.New(c.path(key) + ".lock")
	locked, err := lock.TryLockContext(ctx, 20*time.Millisecond)
	if err != nil || !locked {
		return Entry{}, false, fmt.Errorf("credential cache lock: %w", errors.Join(err, ctx.Err()))
	}
	defer lock.Unlock()
	// Another invocation may have fetched while this one waited.
	if e, ok := c.Get(key); ok {
		return e, true, nil
	}
	e, err = fetch(ctx)
	if err != nil {
		return Entry{}, false, err
	}
	if !c.now().Before(e.Expiration) {
		return Entry{}, false, errors.New("credential cache: fetched credentials are already expired")
	}
	if err := c.put(key, e); err != nil {
		// The credentials are good; only caching failed.
		return e, false, err
	}
	return e, false, nil
}

func (c *Cache) put(key string, e Entry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(c.dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("credential cache: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("credential cache: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), c.path(key))
}

// Purge removes expired entries and their locks.
func (c *Cache) Purge() error {
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return err
	}
	for _, de := range ents {
		name := de.Name()
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		var e Entry
		b, err := os.ReadFile(filepath.Join(c.dir, name))
		if err == nil && json.Unmarshal(b, &e) == nil && c.now().Before(e.Expiration) {
			continue
		}
		if err := os.Remove(filepath.Join(c.dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}
