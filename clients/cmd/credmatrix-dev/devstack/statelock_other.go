//go:build !unix

package devstack

import (
	"errors"
	"os"
)

var errLocked = errors.New("locked")

// tryLock does not lock where flock(2) is missing: the port check still
// stops a second stack on the default ports.
func tryLock(*os.File) error { return nil }
