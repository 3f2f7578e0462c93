//go:build !unix

package main

import "context"

// startInBackground needs Unix sessions and inherited file descriptors.
func (a *app) startInBackground(context.Context, string) error {
	return usagef("--background is supported on Unix only; run a command after -- instead")
}
