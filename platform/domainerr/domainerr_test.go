package domainerr_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/credmatrix/credmatrix/platform/domainerr"
)

func TestCodeAndMessageOf(t *testing.T) {
	cause := errors.New("pq: connection refused to 10.0.0.7")
	type result struct {
		Code    domainerr.Code
		Message string
	}
	for _, tc := range []struct {
		name string
		err  error
		want result
	}{
		{"nil", nil, result{"", ""}},
		{"domain", domainerr.Errorf(domainerr.NotFound, "grant %q not found", "g-1"), result{domainerr.NotFound, `grant "g-1" not found`}},
		{"domain/wrapped", fmt.Errorf("revoke: %w", &domainerr.Error{Code: domainerr.Unavailable, Message: "grant store unavailable", Err: cause}), result{domainerr.Unavailable, "grant store unavailable"}},
		{"domain/joined", errors.Join(cause, domainerr.Errorf(domainerr.Invalid, "x: bad")), result{domainerr.Invalid, "x: bad"}},
		{"domain/internal-hides-message", &domainerr.Error{Code: domainerr.Internal, Message: "detail", Err: cause}, result{domainerr.Internal, domainerr.InternalMessage}},
		{"domain/unknown-code-is-internal", domainerr.Errorf("teapot", "short and stout"), result{domainerr.Internal, domainerr.InternalMessage}},
		{"unknown", cause, result{domainerr.Internal, domainerr.InternalMessage}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := result{domainerr.CodeOf(tc.err), domainerr.MessageOf(tc.err)}
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

func TestErrorTextAndUnwrap(t *testing.T) {
	cause := errors.New("disk full")
	e := &domainerr.Error{Code: domainerr.Unavailable, Message: "audit store unavailable", Err: cause}
	if got, want := e.Error(), "audit store unavailable: disk full"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(e, cause) {
		t.Error("errors.Is does not see the cause")
	}
	if got := domainerr.Errorf(domainerr.Invalid, "a: %d", 1).Error(); got != "a: 1" {
		t.Errorf("Error() without cause = %q", got)
	}
}
