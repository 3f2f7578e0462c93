// Package kmstest starts local-kms (github.com/nsmithuk/local-kms) for
// tests: a real implementation of the AWS KMS protocol on a free loopback
// port, one per region. `make tools` builds it into bin/local-kms; without
// it the test is skipped (failed when CREDMATRIX_REQUIRE_DEPS=1, as in CI).
package kmstest

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/credmatrix/credmatrix/platform/pgtest"
)

// Account is the AWS account id local-kms is started with.
const Account = "111122223333"

// Static test credentials; local-kms does not check them.
const (
	AccessKeyID     = "AKIDLOCALKMS"
	SecretAccessKey = "local-kms-secret"
)

// Binary finds local-kms: $CREDMATRIX_LOCAL_KMS, else bin/local-kms at the
// repository root.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("CREDMATRIX_LOCAL_KMS"); p != "" {
		return p
	}
	if dir, err := os.Getwd(); err == nil {
		for {
			if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
				p := filepath.Join(dir, "bin", "local-kms")
				if _, err := os.Stat(p); err == nil {
					return p
				}
				break
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	pgtest.MissingDependency(t, "local-kms", "run `make tools` (builds bin/local-kms) or set CREDMATRIX_LOCAL_KMS")
	return ""
}

var startedRE = regexp.MustCompile(`Local KMS started on [^:]*:(\d+)`)

// Start starts a local-kms for region and returns its endpoint URL
// (http://127.0.0.1:<port>) and a client for it. It stops with the test.
func Start(t testing.TB, region string) (string, *kms.Client) {
	t.Helper()
	bin := Binary(t)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = append(os.Environ(), "PORT=0", "KMS_REGION="+region, "KMS_ACCOUNT_ID="+Account, "KMS_DATA_PATH="+t.TempDir())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start local-kms: %v", err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	port := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		sent := false
		for sc.Scan() {
			if m := startedRE.FindStringSubmatch(sc.Text()); m != nil && !sent {
				port <- m[1]
				sent = true
			}
		}
	}()
	var p string
	select {
	case p = <-port:
	case <-time.After(30 * time.Second):
		t.Fatal("local-kms did not report its port within 30s")
	}
	endpoint := "http://127.0.0.1:" + p
	return endpoint, kms.New(kms.Options{
		Region:       region,
		BaseEndpoint: aws.String(endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider(AccessKeyID, SecretAccessKey, ""),
	})
}

// CreateKey creates a KMS key with alias and returns its ARN.
func CreateKey(t testing.TB, c *kms.Client, alias string) string {
	t.Helper()
	ctx := context.Background()
	out, err := c.CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("credmatrix test " + alias)})
	if err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	if _, err := c.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String(alias), TargetKeyId: out.KeyMetadata.KeyId}); err != nil {
		t.Fatalf("CreateAlias: %v", err)
	}
	return *out.KeyMetadata.Arn
}
