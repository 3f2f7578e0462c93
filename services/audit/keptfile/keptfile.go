// Package keptfile keeps the audit log's latest signed checkpoint in a file
// outside the store (audit.Kept), written atomically: a new file is
// written and synced beside it, renamed over it, and the directory
// synced, so a crash leaves the old checkpoint or the new one, never a
// torn one.
package keptfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/credmatrix/credmatrix/services/audit"
)

// maxNote bounds what Load reads: a signed note is a few hundred bytes.
const maxNote = 64 << 10

// File is an audit.Kept in one file.
type File struct {
	path string
}

var _ audit.Kept = (*File)(nil)

// New returns the kept checkpoint file at path (which need not exist yet).
func New(path string) *File { return &File{path: path} }

// Path is the file's path.
func (f *File) Path() string { return f.path }

// Load implements audit.Kept: the file's content, or nil when it does not
// exist.
func (f *File) Load() ([]byte, error) {
	fh, err := os.Open(f.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kept checkpoint %s: %w", f.path, err)
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, maxNote+1))
	if err != nil {
		return nil, fmt.Errorf("kept checkpoint %s: %w", f.path, err)
	}
	if len(b) > maxNote {
		return nil, fmt.Errorf("kept checkpoint %s: larger than %d bytes: not a checkpoint", f.path, maxNote)
	}
	return b, nil
}

// Save implements audit.Kept.
func (f *File) Save(note []byte) error {
	dir := filepath.Dir(f.path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(f.path)+".*")
	if err != nil {
		return fmt.Errorf("save kept checkpoint %s: %w", f.path, err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename: nothing to remove
	if _, err := tmp.Write(note); err != nil {
		tmp.Close()
		return fmt.Errorf("save kept checkpoint %s: %w", f.path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save kept checkpoint %s: %w", f.path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save kept checkpoint %s: %w", f.path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o600); err != nil {
		return fmt.Errorf("save kept checkpoint %s: %w", f.path, err)
	}
	if err := os.Rename(tmp.Name(), f.path); err != nil {
		return fmt.Errorf("save kept checkpoint %s: %w", f.path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("save kept checkpoint %s: %w", f.path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("save kept checkpoint %s: sync directory: %w", f.path, err)
	}
	return nil
}
