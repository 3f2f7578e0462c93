package pgtest

import (
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestClusterAndDatabase(t *testing.T) {
	c := Start(t)
	dsn := c.NewDatabase(t)
	if !strings.Contains(dsn, "port="+strconv.Itoa(c.Port())) {
		t.Fatalf("dsn %q", dsn)
	}
	db := dsn[strings.LastIndex(dsn, "dbname=")+len("dbname=") : strings.Index(dsn, " sslmode")]
	out, err := exec.Command(filepath.Join(c.bin, "psql"), "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port()), "-U", "postgres", "-d", db, "-Atc", "select 40+2").CombinedOutput()
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	if strings.TrimSpace(string(out)) != "42" {
		t.Fatalf("psql said %q", out)
	}
}
