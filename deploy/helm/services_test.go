package helm

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/credmatrix/credmatrix/deploy/internal/svcproc"
	"github.com/credmatrix/credmatrix/deploy/internal/testpki"
)

// TestRenderedConfigsStartServices runs the real service binaries with the
// config files, trust policy and key rings the chart renders by default,
// laid out as the pods mount them (paths moved under a temp dir), and
// checks each becomes SERVING through credmatrix-probe over mTLS — the
// exact check the chart's probes exec. It keeps the chart in step with the
// binaries' configuration: a renamed or new required setting fails here.
func TestRenderedConfigsStartServices(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts the three services")
	}
	ms := render(t, "--set", "metrics.enabled=true")
	bin := buildBinaries(t)
	root := t.TempDir()
	ca := testpki.New(t, "cluster")
	stranger := testpki.New(t, "stranger")

	ports, metricsPorts := map[string]string{}, map[string]string{}
	for _, c := range components {
		ports[c] = svcproc.FreePort(t)
		metricsPorts[c] = svcproc.FreePort(t)
	}
	host := func(c string) string { return name(c) + "." + namespace + ".svc" }

	// The pod's files: its certificate (tls Secret), keys (keys Secret),
	// config, policy and key rings (ConfigMaps) and its data volume.
	dirs := map[string]map[string]string{}
	for _, c := range components {
		d := map[string]string{}
		for _, sub := range []string{"tls", "keys", "config", "policy", "keyring", "data"} {
			d[sub] = filepath.Join(root, c, sub)
			if err := os.MkdirAll(d[sub], 0o750); err != nil {
				t.Fatal(err)
			}
		}
		dirs[c] = d
		cert, key := ca.Issue(c, "spiffe://cluster.local/ns/"+namespace+"/sa/"+name(c), host(c))
		copyFile(t, cert, filepath.Join(d["tls"], "tls.crt"))
		copyFile(t, key, filepath.Join(d["tls"], "tls.key"))
		copyFile(t, ca.File, filepath.Join(d["tls"], "ca.crt"))
		for _, k := range []string{"audit-hmac-key", "local-sts-signing-key", "root-key"} {
			writeFile(t, filepath.Join(d["keys"], k), randomHex(t))
		}
		cfg := ms.get(t, "ConfigMap", name(c)+"-config").Data["config.yaml"]
		cfg = strings.NewReplacer(
			"/etc/credmatrix/tls", d["tls"],
			"/etc/credmatrix/keys", d["keys"],
			"/etc/credmatrix/policy", d["policy"],
			"/etc/credmatrix/keyring", d["keyring"],
			"/var/lib/credmatrix", d["data"],
		).Replace(cfg)
		writeFile(t, filepath.Join(d["config"], "config.yaml"), cfg)
	}
	writeFile(t, filepath.Join(dirs["broker"]["policy"], "policy.yaml"), ms.get(t, "ConfigMap", name("broker")+"-policy").Data["policy.yaml"])
	writeFile(t, filepath.Join(dirs["keyguard"]["keyring"], "keyring.yaml"), ms.get(t, "ConfigMap", name("keyguard")+"-keyring").Data["keyring.yaml"])

	// Only the listen address and audit's address differ from the pod: the
	// test has no cluster DNS, so callers dial loopback and verify audit's
	// certificate under its Service name, as in the cluster.
	auditAddr := "127.0.0.1:" + ports["audit"]
	procs := map[string]*svcproc.Proc{}
	for _, c := range components {
		args := []string{"--config=" + filepath.Join(dirs[c]["config"], "config.yaml"), "--server.listen-addr=127.0.0.1:" + ports[c],
			"--metrics.listen-addr=127.0.0.1:" + metricsPorts[c]}
		if c != "audit" {
			args = append(args, "--audit.target="+auditAddr, "--audit.server-name="+host("audit"))
		}
		procs[c] = svcproc.Start(t, filepath.Join(bin, c), svcproc.CleanEnv(), args...)
	}

	probe := func(c string, certDir string) []string {
		return []string{
			"--addr=127.0.0.1:" + ports[c], "--server-name=" + host(c),
			"--ca-file=" + filepath.Join(certDir, "ca.crt"),
			"--cert-file=" + filepath.Join(certDir, "tls.crt"),
			"--key-file=" + filepath.Join(certDir, "tls.key"),
			"--timeout=2s",
		}
	}
	for _, c := range components {
		t.Run("serving/"+c, func(t *testing.T) {
			svcproc.WaitServing(t, filepath.Join(bin, "credmatrix-probe"), probe(c, dirs[c]["tls"]), procs[c])
		})
	}

	for _, c := range components {
		t.Run("metrics/"+c, func(t *testing.T) {
			resp, err := http.Get("http://127.0.0.1:" + metricsPorts[c] + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte("credmatrix_grpc_server_requests_total")) {
				t.Errorf("GET /metrics: status %d, no gRPC request metrics in:\n%.500s", resp.StatusCode, body)
			}
		})
	}

	strangerDir := filepath.Join(root, "stranger")
	if err := os.MkdirAll(strangerDir, 0o750); err != nil {
		t.Fatal(err)
	}
	cert, key := stranger.Issue("stranger", "spiffe://cluster.local/ns/"+namespace+"/sa/"+name("broker"), host("broker"))
	copyFile(t, cert, filepath.Join(strangerDir, "tls.crt"))
	copyFile(t, key, filepath.Join(strangerDir, "tls.key"))
	copyFile(t, ca.File, filepath.Join(strangerDir, "ca.crt"))
	for _, c := range components {
		t.Run("attack/client-certificate-from-another-ca/"+c, func(t *testing.T) {
			out, err := exec.Command(filepath.Join(bin, "credmatrix-probe"), probe(c, strangerDir)...).CombinedOutput()
			if err == nil {
				t.Errorf("%s accepted a client certificate from another CA that claims the broker's identity: %s", c, out)
			}
		})
	}
}

// builtBinaries are the binaries the start-up tests run, built once per
// test binary: the three services, the probe and the CLI, as the images
// (and a runner) have them.
var builtBinaries struct {
	once sync.Once
	dir  string
	err  error
}

// buildBinaries returns the directory of the built binaries.
func buildBinaries(t *testing.T) string {
	t.Helper()
	builtBinaries.once.Do(func() {
		dir, err := os.MkdirTemp("", "credmatrix-helm-bin-")
		if err != nil {
			builtBinaries.err = err
			return
		}
		builtBinaries.dir = dir
		cmd := exec.Command("go", "build", "-trimpath", "-o", dir+string(os.PathSeparator),
			"./services/audit/cmd/audit", "./services/broker/cmd/broker", "./services/keyguard/cmd/keyguard",
			"./deploy/cmd/credmatrix-probe", "./clients/cmd/credmatrix")
		cmd.Dir = svcproc.RepoRoot(t)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			builtBinaries.err = fmt.Errorf("build the binaries: %v\n%s", err, out)
		}
	})
	if builtBinaries.err != nil {
		t.Fatal(builtBinaries.err)
	}
	return builtBinaries.dir
}

// TestMain removes the built binaries after the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if builtBinaries.dir != "" {
		os.RemoveAll(builtBinaries.dir)
	}
	os.Exit(code)
}

// writeFile writes with mode 0440, as the chart's Secret volumes do.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o440); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, to, string(b))
}

func randomHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b) + "\n"
}
