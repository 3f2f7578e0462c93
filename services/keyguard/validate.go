package keyguard

import (
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/credmatrix/credmatrix/clients/keyguardclient/envelope"
	"github.com/credmatrix/credmatrix/platform/domainerr"
)

// namePattern is the data class and region syntax, as shown in messages.
const namePattern = "[a-z0-9-]{1,63}"

// validateName checks a data class or region, naming field on failure.
func validateName(field, v string) error {
	switch {
	case v == "":
		return &domainerr.Error{Code: domainerr.Invalid, Message: field + ": required"}
	case !envelope.ValidName(v):
		return &domainerr.Error{Code: domainerr.Invalid, Message: field + ": must match " + namePattern}
	}
	return nil
}

// quoteKey quotes a context key for a message, shortened so that an
// oversized key does not make an oversized message.
func quoteKey(k string) string {
	const max = 64
	if len(k) > max {
		return fmt.Sprintf("%q...", k[:max])
	}
	return fmt.Sprintf("%q", k)
}

// validateContext checks an encryption context. Keys are checked in sorted
// order so the same bad context always gets the same message.
func validateContext(ctx map[string]string) error {
	const field = "encryption_context"
	if len(ctx) > MaxContextPairs {
		return &domainerr.Error{Code: domainerr.Invalid, Message: fmt.Sprintf("%s: at most %d pairs", field, MaxContextPairs)}
	}
	keys := make([]string, 0, len(ctx))
	for k := range ctx {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := ctx[k]
		name := field + "[" + quoteKey(k) + "]"
		var msg string
		switch {
		case k == "":
			msg = "key must not be empty"
		case !utf8.ValidString(k):
			msg = "key must be valid UTF-8"
		case len(k) > MaxContextKeyLen:
			msg = fmt.Sprintf("key exceeds %d bytes", MaxContextKeyLen)
		case strings.HasPrefix(k, ReservedContextPrefix):
			msg = fmt.Sprintf("reserved prefix %q", ReservedContextPrefix)
		case !utf8.ValidString(v):
			msg = "value must be valid UTF-8"
		case len(v) > MaxContextValueLen:
			msg = fmt.Sprintf("value exceeds %d bytes", MaxContextValueLen)
		default:
			continue
		}
		return &domainerr.Error{Code: domainerr.Invalid, Message: name + ": " + msg}
	}
	return nil
}

func (in *EncryptInput) validate() error {
	if err := validateName("data_class", in.DataClass); err != nil {
		return err
	}
	if err := validateName("region", in.Region); err != nil {
		return err
	}
	if len(in.Plaintext) > MaxPlaintextSize {
		return &domainerr.Error{Code: domainerr.Invalid, Message: fmt.Sprintf("plaintext: exceeds %d bytes", MaxPlaintextSize)}
	}
	return validateContext(in.Context)
}

func (in *DecryptInput) validate() error {
	switch {
	case len(in.Ciphertext) == 0:
		return &domainerr.Error{Code: domainerr.Invalid, Message: "ciphertext: required"}
	case len(in.Ciphertext) > MaxCiphertextSize:
		return &domainerr.Error{Code: domainerr.Invalid, Message: fmt.Sprintf("ciphertext: exceeds %d bytes", MaxCiphertextSize)}
	}
	return validateContext(in.Context)
}

// validate checks the configuration, naming the bad entry.
func (c *Config) validate() error {
	if c.Backend == nil {
		return fmt.Errorf("keyguard: config: backend required")
	}
	if c.Auditor == nil {
		return fmt.Errorf("keyguard: config: auditor required")
	}
	if c.BackendName == "" {
		return fmt.Errorf("keyguard: config: backend name required")
	}
	for i, r := range c.Rings {
		if !envelope.ValidName(r.DataClass) || !envelope.ValidName(r.Region) {
			return fmt.Errorf("keyguard: config: rings[%d] %q: data class and region must match %s", i, r.String(), namePattern)
		}
	}
	for i, g := range c.Grants {
		switch {
		case g.Principal == "":
			return fmt.Errorf("keyguard: config: grants[%d]: principal required", i)
		case !envelope.ValidName(g.DataClass):
			return fmt.Errorf("keyguard: config: grants[%d]: data class must match %s", i, namePattern)
		case len(g.Operations) == 0:
			return fmt.Errorf("keyguard: config: grants[%d]: at least one operation required", i)
		case len(g.Regions) == 0:
			return fmt.Errorf("keyguard: config: grants[%d]: at least one region required", i)
		}
		for _, op := range g.Operations {
			if !op.valid() {
				return fmt.Errorf("keyguard: config: grants[%d]: unknown %s", i, op)
			}
		}
		for _, r := range g.Regions {
			if !envelope.ValidName(r) {
				return fmt.Errorf("keyguard: config: grants[%d]: region %q must match %s", i, r, namePattern)
			}
		}
		if err := validateContext(g.RequiredContext); err != nil {
			return fmt.Errorf("keyguard: config: grants[%d]: required context: %s", i, domainerr.MessageOf(err))
		}
		if strings.HasPrefix(g.ID, "g-") {
			return fmt.Errorf("keyguard: config: grants[%d]: id %q: the prefix \"g-\" is kept for grants created through the API", i, g.ID)
		}
	}
	for i, a := range c.Admins {
		if a == "" {
			return fmt.Errorf("keyguard: config: admins[%d]: empty principal", i)
		}
	}
	return nil
}
