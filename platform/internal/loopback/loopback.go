// Package loopback decides whether an address stays on this machine, so that
// the server and the client apply the same rule before allowing plaintext
// gRPC. It deliberately resolves nothing: a name other than "localhost" could
// resolve anywhere, so it never counts as loopback.
package loopback

import (
	"net"
	"net/netip"
	"strings"
)

// Host reports whether host is a loopback IP literal (127.0.0.0/8, ::1,
// optionally in brackets) or the name "localhost".
func Host(host string) bool {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	return ip.Unmap().IsLoopback()
}

// HostPort reports whether addr is a "host:port" whose host passes Host.
func HostPort(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	return Host(host)
}
