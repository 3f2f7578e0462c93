package broker

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newLimiter(Limits{PerSubject: 1, SubjectBurst: 2, PerRole: 10, RoleBurst: 3}, func() time.Time { return now })
	type step struct {
		name    string
		advance time.Duration
		subject string
		roles   []string
		ok      bool
		wait    time.Duration
	}
	steps := []step{
		{"burst-1", 0, "a", []string{"r1"}, true, 0},
		{"burst-2", 0, "a", []string{"r1"}, true, 0},
		{"subject-exhausted", 0, "a", []string{"r1"}, false, time.Second},
		{"other-subject-same-role", 0, "b", []string{"r1"}, true, 0},
		{"role-exhausted", 0, "c", []string{"r1"}, false, 100 * time.Millisecond},
		{"two-targets-need-two-role-tokens", 0, "d", []string{"r2", "r2"}, true, 0},
		{"role-refill", 100 * time.Millisecond, "c", []string{"r1"}, true, 0},
		{"role-short-of-two", 0, "e", []string{"r1", "r1"}, false, 200 * time.Millisecond},
		{"refused-took-nothing-1", 0, "e", []string{"r4"}, true, 0},
		{"refused-took-nothing-2", 0, "e", []string{"r4"}, true, 0},
		{"subject-refill", 900 * time.Millisecond, "a", []string{"r3"}, true, 0},
	}
	for _, s := range steps {
		now = now.Add(s.advance)
		ok, wait := l.allow(s.subject, s.roles)
		if diff := cmp.Diff([]any{ok, wait}, []any{s.ok, s.wait}); diff != "" {
			t.Errorf("%s: (ok, wait) (-got +want):\n%s", s.name, diff)
		}
	}
}

func TestLimiterDisabled(t *testing.T) {
	l := newLimiter(Limits{}, time.Now)
	for range 1000 {
		if ok, _ := l.allow("a", []string{"r"}); !ok {
			t.Fatal("a disabled limiter refused")
		}
	}
	if len(l.buckets) != 0 {
		t.Errorf("a disabled limiter keeps %d buckets", len(l.buckets))
	}
}
