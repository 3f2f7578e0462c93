package loopback

import "testing"

func TestHost(t *testing.T) {
	tests := []struct {
		name string
		host string
		want bool
	}{
		{name: "ipv4/loopback", host: "127.0.0.1", want: true},
		{name: "ipv4/loopback-range", host: "127.1.2.3", want: true},
		{name: "ipv6/loopback", host: "::1", want: true},
		{name: "ipv6/bracketed", host: "[::1]", want: true},
		{name: "ipv4-mapped-ipv6/loopback", host: "::ffff:127.0.0.1", want: true},
		{name: "name/localhost", host: "localhost", want: true},
		{name: "name/localhost-upper", host: "LOCALHOST", want: true},
		{name: "name/other", host: "broker.internal", want: false},
		{name: "name/localhost-suffix", host: "localhost.evil.example", want: false},
		{name: "ipv4/any", host: "0.0.0.0", want: false},
		{name: "ipv6/any", host: "::", want: false},
		{name: "ipv4/private", host: "10.0.0.1", want: false},
		{name: "empty", host: "", want: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Host(tc.host); got != tc.want {
				t.Errorf("Host(%q) = %v, want %v", tc.host, got, tc.want)
			}
		})
	}
}

func TestHostPort(t *testing.T) {
	tests := []struct {
		name string
		addr string
		want bool
	}{
		{name: "ipv4", addr: "127.0.0.1:8443", want: true},
		{name: "ipv6", addr: "[::1]:0", want: true},
		{name: "localhost", addr: "localhost:1", want: true},
		{name: "empty-host", addr: ":8443", want: false},
		{name: "no-port", addr: "127.0.0.1", want: false},
		{name: "remote", addr: "10.1.1.1:8443", want: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := HostPort(tc.addr); got != tc.want {
				t.Errorf("HostPort(%q) = %v, want %v", tc.addr, got, tc.want)
			}
		})
	}
}
