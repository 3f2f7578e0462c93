package pgnotify

import (
	"context"

	"github.com/hashicorp/go-hclog"
)

// FollowFunc reports changes to shared state (a store's Follow method):
// changed after each change another replica announces (and after each
// reconnection), onError when following is interrupted, until ctx ends.
type FollowFunc func(ctx context.Context, changed func(), onError func(error))

// Refresh runs follow and calls refresh after the changes it reports,
// until ctx ends: the one loop with which broker and keyguard replicas keep
// their copy of the shared state fresh. Changes reported while a refresh
// runs are folded into one more refresh, never queued up. Errors are
// logged: requests check the state version themselves, so a missed refresh
// only makes the next request wait for it.
func Refresh(ctx context.Context, follow FollowFunc, refresh func(context.Context) error, log hclog.Logger) {
	changes := make(chan struct{}, 1)
	go follow(ctx, func() {
		select {
		case changes <- struct{}{}:
		default: // a refresh is pending already
		}
	}, func(err error) { log.Warn("state change notifications interrupted; reconnecting", "error", err) })
	for {
		select {
		case <-ctx.Done():
			return
		case <-changes:
			if err := refresh(ctx); err != nil && ctx.Err() == nil {
				log.Error("refreshing the shared state failed; requests will retry it", "error", err)
			}
		}
	}
}
