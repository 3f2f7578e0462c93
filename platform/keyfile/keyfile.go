// Package keyfile reads and creates the small symmetric keys the services
// take from files: the local STS signing key, the audit HMAC key, the local
// key ring's root key. A key file holds the key in hex (whitespace around it
// is ignored) and must not be readable by other users.
package keyfile

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Read returns the n-byte key in the file at path.
func Read(path string, n int) ([]byte, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if info.Mode().Perm()&0o007 != 0 {
		return nil, fmt.Errorf("key file %s: readable by other users (mode %v); chmod 600 it", path, info.Mode().Perm())
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	key := make([]byte, hex.DecodedLen(len(bytes.TrimSpace(raw))))
	m, err := hex.Decode(key, bytes.TrimSpace(raw))
	if err != nil {
		// The decoder's error quotes the offending byte: keep key material
		// out of the message.
		return nil, fmt.Errorf("key file %s: not hex-encoded", path)
	}
	if m != n {
		return nil, fmt.Errorf("key file %s: holds %d bytes, want %d (%d hex digits)", path, m, n, 2*n)
	}
	return key[:m], nil
}

// Ensure returns the n-byte key at path, creating the file with a fresh
// random key (mode 0600) when it does not exist. Development stacks use it;
// production keys are provisioned, not generated.
func Ensure(path string, n int) ([]byte, error) {
	key, err := Read(path, n)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	key = make([]byte, n)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if _, err := f.WriteString(hex.EncodeToString(key) + "\n"); err != nil {
		f.Close()
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return key, nil
}
