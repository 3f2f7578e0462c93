// Command goldenlog regenerates the golden audit log in
// clients/auditclient/verify/testdata/golden: the scripted scenario's bundle,
// the log's public key and an older checkpoint an operator kept.
//
//	go run ./services/audit/internal/goldenlog clients/auditclient/verify/testdata/golden
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/credmatrix/credmatrix/services/audit/audittest"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: goldenlog <dir>")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "goldenlog:", err)
		os.Exit(1)
	}
}

func run(dir string) error {
	g, err := audittest.GenerateGolden(context.Background())
	if err != nil {
		return err
	}
	for name, data := range map[string][]byte{
		"log.bundle":      g.Bundle,
		"log.pub":         []byte(g.PublicKey + "\n"),
		"kept.checkpoint": g.Kept,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
