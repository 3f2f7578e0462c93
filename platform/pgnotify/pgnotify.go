// Package pgnotify follows a PostgreSQL LISTEN channel on a dedicated
// connection, reconnecting when the connection drops.
//
// Notifications are a hint, never the guarantee: PostgreSQL delivers them
// only to sessions listening at commit time, so any connection loss may
// lose some. Listen therefore calls the handler with Reconnected after every
// (re)connection, and the handler re-reads the state it follows. Services
// that must not act on stale state also check a version in the request path
// (see platform/coalesce); the notification only moves the refresh off it.
package pgnotify

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// Reconnected is the payload passed to the handler when the listening
// connection was (re)established: notifications may have been missed.
const Reconnected = "\x00reconnected"

// Backoff bounds the waits between reconnection attempts.
const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = 2 * time.Second
)

// Listen connects with cfg, listens on channel and calls handle with the
// payload of each notification, and with Reconnected after each successful
// LISTEN, until ctx ends. Connection failures are reported to onError (which
// may be nil) and retried with capped exponential backoff. handle runs on
// Listen's goroutine: a slow handler delays the next notification, never
// loses it (PostgreSQL queues them).
func Listen(ctx context.Context, cfg *pgx.ConnConfig, channel string, handle func(payload string), onError func(error)) {
	backoff := minBackoff
	for ctx.Err() == nil {
		err := listenOnce(ctx, cfg, channel, handle, func() { backoff = minBackoff })
		if ctx.Err() != nil {
			return
		}
		if onError != nil && err != nil {
			onError(err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

func listenOnce(ctx context.Context, cfg *pgx.ConnConfig, channel string, handle func(string), connected func()) error {
	conn, err := pgx.ConnectConfig(ctx, cfg.Copy())
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return err
	}
	connected()
	handle(Reconnected)
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		handle(n.Payload)
	}
}
