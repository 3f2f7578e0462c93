package audit

import (
	"encoding/base64"
	"encoding/binary"

	"github.com/credmatrix/credmatrix/platform/domainerr"
)

// pageTokenVersion prefixes every page token so that the format can change
// without old tokens being misread.
const pageTokenVersion = 1

// EncodePageToken returns the opaque token of a page that continues at
// sequence next. Stores use it so tokens are the same on every backend.
func EncodePageToken(next uint64) string {
	var b [9]byte
	b[0] = pageTokenVersion
	binary.BigEndian.PutUint64(b[1:], next)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// DecodePageToken returns the sequence a page token continues at; "" is the
// first page (0). A malformed token is an Invalid error naming page_token.
func DecodePageToken(token string) (next uint64, err error) {
	if token == "" {
		return 0, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(b) != 9 || b[0] != pageTokenVersion {
		return 0, domainerr.Errorf(domainerr.Invalid, "page_token: malformed")
	}
	return binary.BigEndian.Uint64(b[1:]), nil
}
