package pgnotify_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/credmatrix/credmatrix/platform/pgnotify"
)

// TestRefresh: every announced change is followed by a refresh that
// starts after it; changes announced while a refresh runs fold into one
// more refresh; the loop ends with its context.
func TestRefresh(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	changed := make(chan func(), 1)
	follow := func(ctx context.Context, ch func(), _ func(error)) { changed <- ch; <-ctx.Done() }
	started := make(chan struct{})
	release := make(chan struct{})
	var refreshes atomic.Int64
	refresh := func(context.Context) error {
		refreshes.Add(1)
		started <- struct{}{}
		<-release
		return errors.New("store down (logged, not fatal)")
	}
	done := make(chan struct{})
	go func() { defer close(done); pgnotify.Refresh(ctx, follow, refresh, hclog.NewNullLogger()) }()
	announce := <-changed

	announce()
	<-started // first refresh running
	for range 5 {
		announce() // fold into one pending refresh
	}
	release <- struct{}{}
	<-started // the pending one, started after the five changes
	release <- struct{}{}
	select {
	case <-started:
		t.Fatalf("a third refresh ran for changes already covered")
	case <-time.After(100 * time.Millisecond):
	}
	announce()
	<-started
	release <- struct{}{}
	cancel()
	<-done
	if got := refreshes.Load(); got != 3 {
		t.Errorf("%d refreshes, want 3", got)
	}
}
