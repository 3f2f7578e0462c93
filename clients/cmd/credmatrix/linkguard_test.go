package main

import (
	"os/exec"
	"strings"
	"testing"
)

// forbidden are packages the user CLI must never link: stores, cloud SDK
// service clients, servers. The CLI runs as an AWS credential_process on
// every AWS CLI call and is downloaded by every CI job, so it stays small;
// and a client never carries server code.
var forbidden = []string{
	"modernc.org/sqlite",
	"github.com/jackc/pgx",
	"github.com/aws/aws-sdk-go-v2/service/sts",
	"github.com/aws/aws-sdk-go-v2/service/iam",
	"github.com/aws/aws-sdk-go-v2/service/kms",
	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev",
	// With the release build tags (releaseTags): gRPC's request tracing
	// and html/template, whose reflective method calls keep every method
	// of every type in the binary (about 5 MB of the CLI).
	"golang.org/x/net/trace",
	"html/template",
}

// releaseTags are the build tags make dist builds the CLI with
// (tools/release: cliTags).
const releaseTags = "grpcnotrace"

// allowedOwn are the only credmatrix packages (by prefix) it may link: the
// contracts, the client libraries, client-side plumbing, and the broker's
// trust-policy language for `policy lint` and `policy test`.
var allowedOwn = []string{
	"github.com/credmatrix/credmatrix/proto/",
	"github.com/credmatrix/credmatrix/clients/",
	"github.com/credmatrix/credmatrix/platform/grpcclient",
	"github.com/credmatrix/credmatrix/platform/telemetry",
	"github.com/credmatrix/credmatrix/platform/config",
	"github.com/credmatrix/credmatrix/platform/internal/",
	"github.com/credmatrix/credmatrix/services/broker/policy",
	"github.com/credmatrix/credmatrix/services/broker/oidc",
}

// TestLinksNoServerCode lists what the CLI links as released (with
// releaseTags) and fails on anything forbidden or server-side.
func TestLinksNoServerCode(t *testing.T) {
	// go test puts the running toolchain's bin first on PATH.
	out, err := exec.Command("go", "list", "-tags", releaseTags, "-deps", "-f", "{{.ImportPath}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps returned %d packages; the guard would check nothing:\n%s", len(deps), out)
	}
	self := "github.com/credmatrix/credmatrix/clients/cmd/credmatrix"
	for _, p := range deps {
		for _, f := range forbidden {
			if p == f || strings.HasPrefix(p, f+"/") {
				t.Errorf("credmatrix links %s (forbidden: %s)", p, f)
			}
		}
		if p == self || !strings.HasPrefix(p, "github.com/credmatrix/credmatrix/") {
			continue
		}
		ok := false
		for _, a := range allowedOwn {
			if strings.HasPrefix(p, a) {
				ok = true
			}
		}
		if !ok || strings.HasPrefix(p, "github.com/credmatrix/credmatrix/clients/cmd/") {
			t.Errorf("credmatrix links %s, which is not a client-side package", p)
		}
	}
}
