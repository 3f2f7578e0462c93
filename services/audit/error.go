package audit

import (
	"errors"

	"github.com/credmatrix/credmatrix/platform/domainerr"
)

// unavailable wraps a store failure: the caller learns only that the log is
// unavailable; the cause stays in Err for the edge to log.
func unavailable(msg string, err error) error {
	if _, ok := errors.AsType[*domainerr.Error](err); ok {
		return err // already classified by the store (e.g. a bad page token)
	}
	return &domainerr.Error{Code: domainerr.Unavailable, Message: msg, Err: err}
}
