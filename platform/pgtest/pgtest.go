// Package pgtest starts throwaway PostgreSQL clusters for tests: initdb into
// a fresh directory, pg_ctl start on a free loopback port, a fresh database
// per caller, everything removed at cleanup. It uses the Debian PostgreSQL
// server binaries (apt-get install postgresql; .ci/run installs them).
//
// Without the binaries a test skips with a message saying how to get them,
// unless CREDMATRIX_REQUIRE_DEPS=1 (set by .ci/run), where it fails: CI must
// never pass by skipping.
package pgtest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// RequireEnv names the variable that turns a missing dependency from a skip
// into a failure.
const RequireEnv = "CREDMATRIX_REQUIRE_DEPS"

// Cluster is a running throwaway PostgreSQL cluster.
type Cluster struct {
	bin  string
	dir  string
	port int
	run  func(name string, args ...string) *exec.Cmd
}

// SkipReportEnv names a file to which MissingDependency appends one line
// per skip ("<test>: <what> not available: <how>"): `make test` sets it and
// prints the file at the end, because go test shows a passing package's
// skip messages only with -v.
const SkipReportEnv = "CREDMATRIX_SKIP_REPORT"

// MissingDependency skips t, or fails it when RequireEnv is set. Every test
// that needs a tool or service it cannot start itself calls it, so the
// skip says what is missing and how to get it.
func MissingDependency(t testing.TB, what, how string) {
	t.Helper()
	msg := fmt.Sprintf("%s not available: %s", what, how)
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s (%s=1: dependencies are required here)", msg, RequireEnv)
	}
	if report := os.Getenv(SkipReportEnv); report != "" {
		// One short write with O_APPEND: lines of concurrent test
		// binaries do not interleave.
		if f, err := os.OpenFile(report, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err == nil {
			_, _ = f.WriteString(t.Name() + ": " + msg + "\n")
			f.Close()
		}
	}
	t.Skip(msg)
}

// binDir finds the PostgreSQL server binaries.
func binDir() (string, error) {
	if d := os.Getenv("CREDMATRIX_PG_BINDIR"); d != "" {
		return d, nil
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		d := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	// Debian installs the server outside PATH, one folder per version.
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", fmt.Errorf("no initdb found")
}

func version(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// Start initialises and starts a cluster that is stopped and deleted when
// t's test ends.
func Start(t testing.TB) *Cluster {
	t.Helper()
	bin, err := binDir()
	if err != nil {
		MissingDependency(t, "PostgreSQL server", "install Debian's postgresql package (apt-get install postgresql) or set CREDMATRIX_PG_BINDIR")
	}
	dir, err := os.MkdirTemp("", "credmatrix-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &Cluster{bin: bin, dir: dir}
	c.run = func(name string, args ...string) *exec.Cmd {
		return exec.Command(filepath.Join(bin, name), args...)
	}
	// PostgreSQL refuses to run as root: run it as the postgres user, in a
	// folder that user owns.
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			MissingDependency(t, "postgres system user", "install Debian's postgresql package, which creates it")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		c.run = func(name string, args ...string) *exec.Cmd {
			return exec.Command("runuser", append([]string{"-u", "postgres", "--", filepath.Join(bin, name)}, args...)...)
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	if out, err := c.run("initdb", "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "-D", data).CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	// A free port can be taken between probing and binding: try a few.
	for attempt := 0; ; attempt++ {
		c.port = freePort(t)
		opts := fmt.Sprintf("-k %s -p %d -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200", dir, c.port)
		out, err := c.run("pg_ctl", "-D", data, "-l", filepath.Join(dir, "log"), "-o", opts, "-w", "-t", "30", "start").CombinedOutput()
		if err == nil {
			break
		}
		if attempt == 2 {
			log, _ := os.ReadFile(filepath.Join(dir, "log"))
			t.Fatalf("pg_ctl start: %v\n%s\n%s", err, out, log)
		}
	}
	t.Cleanup(func() {
		if out, err := c.run("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop").CombinedOutput(); err != nil {
			t.Logf("pg_ctl stop: %v\n%s", err, out)
		}
	})
	return c
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Port is the cluster's TCP port on 127.0.0.1.
func (c *Cluster) Port() int { return c.port }

// DSN returns a connection string (libpq keyword form, which pgx accepts)
// for database db as the superuser postgres.
func (c *Cluster) DSN(db string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=%s sslmode=disable", c.port, db)
}

// NewDatabase creates a fresh, uniquely named database and returns its DSN.
func (c *Cluster) NewDatabase(t testing.TB) string {
	t.Helper()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "t_" + hex.EncodeToString(b)
	cmd := c.run("createdb", "-h", "127.0.0.1", "-p", strconv.Itoa(c.port), "-U", "postgres", name)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("createdb: %v\n%s", err, out.String())
	}
	return c.DSN(name)
}
