package main

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

// refuseUnknownSubcommands makes every command group (audit, keyguard,
// policy …) refuse an unknown subcommand as a usage error, as the root
// does, instead of printing its help and exiting 0.
func refuseUnknownSubcommands(cmd *cobra.Command) {
	for _, c := range cmd.Commands() {
		refuseUnknownSubcommands(c)
	}
	if !cmd.HasSubCommands() || cmd.Run != nil || cmd.RunE != nil || !cmd.HasParent() {
		return
	}
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return cmd.Help()
		}
		msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
		if cmd.SuggestionsMinimumDistance <= 0 {
			cmd.SuggestionsMinimumDistance = 2
		}
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += "; did you mean " + strings.Join(s, " or ") + "?"
		}
		return usagef("%s (see '%s --help')", msg, cmd.CommandPath())
	}
}

// requestFields maps the request fields services name in INVALID_ARGUMENT
// messages to the flags that set them, so an error points at what the user
// typed ("--duration: must be between 15m and 12h", not
// "targets[0].duration: …").
var requestFields = map[string]string{
	"duration":           "--duration",
	"role":               "--role",
	"account":            "--account",
	"region":             "--region",
	"policy":             "--policy",
	"reason":             "--reason",
	"data_class":         "--data-class",
	"encryption_context": "--context",
	"token":              "the OIDC token",
}

var targetField = regexp.MustCompile(`^targets\[(\d+)\]\.([a-z_]+)`)

// flagNamesIn rewrites the leading field name of a service's message to
// the flag that sets it; other messages pass unchanged.
func flagNamesIn(msg string) string {
	if m := targetField.FindStringSubmatch(msg); m != nil {
		flag, ok := requestFields[m[2]]
		if !ok {
			return msg
		}
		i, _ := strconv.Atoi(m[1])
		if i > 0 {
			flag += fmt.Sprintf(" (target %d)", i+1)
		}
		return flag + msg[len(m[0]):]
	}
	field, rest, ok := strings.Cut(msg, ":")
	if !ok {
		return msg
	}
	if flag, known := requestFields[field]; known {
		return flag + ":" + rest
	}
	return msg
}
