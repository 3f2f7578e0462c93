package policy

import "bytes"

// WriteJSONString exposes the canonical writer's string encoding.
func WriteJSONString(s string) string {
	var b bytes.Buffer
	writeString(&b, s)
	return b.String()
}
