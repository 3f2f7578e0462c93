package main

import (
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/credmatrix/credmatrix/clients/keyguardclient"
	"github.com/spf13/cobra"
)

// maxInput bounds what encrypt/decrypt read; the service enforces its own
// limits, this only stops the CLI from reading an endless stream.
const maxInput = 1 << 20

type cryptFlags struct {
	in, out string
	binary  bool
	context []string
}

func (f *cryptFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.in, "in", "-", "input file (- for standard input)")
	fl.StringVar(&f.out, "out", "-", "output file (- for standard output)")
	fl.BoolVar(&f.binary, "binary", false, "ciphertext is raw bytes instead of base64")
	fl.StringArrayVar(&f.context, "context", nil, "encryption context pair key=value (repeatable); the same pairs are needed to decrypt")
}

func (a *app) readInput(path string) ([]byte, error) {
	var r io.Reader = a.in
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, usagef("open --in: %v", err)
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, maxInput+1))
	if err != nil {
		return nil, fmt.Errorf("read input: %w", err)
	}
	if len(b) > maxInput {
		return nil, usagef("input exceeds %d bytes", maxInput)
	}
	return b, nil
}

func (a *app) writeOutput(path string, b []byte) error {
	if path == "-" {
		_, err := a.out.Write(b)
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

func (a *app) encryptCommand() *cobra.Command {
	var (
		f                 cryptFlags
		dataClass, region string
	)
	cmd := &cobra.Command{
		Use:   "encrypt",
		Short: "Encrypt data under the key ring of a data class and region",
		Example: `  echo -n 'card=4111...' | credmatrix encrypt --data-class confidential --region eu-west-1 \
      --context table=payments > record.enc`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			encCtx, err := parsePairs("context", f.context)
			if err != nil {
				return err
			}
			plaintext, err := a.readInput(f.in)
			if err != nil {
				return err
			}
			conn, err := a.dial(a.keyguardAddr)
			if err != nil {
				return err
			}
			defer conn.Close()
			ct, _, err := keyguardclient.New(conn).Encrypt(cmd.Context(), dataClass, region, plaintext, encCtx)
			if err != nil {
				return err
			}
			if !f.binary {
				ct = []byte(base64.StdEncoding.EncodeToString(ct) + "\n")
			}
			return a.writeOutput(f.out, ct)
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&dataClass, "data-class", "", "data class (public, internal, confidential, restricted...)")
	cmd.Flags().StringVar(&region, "region", "", "region of the key ring, e.g. eu-west-1")
	return cmd
}

func (a *app) decryptCommand() *cobra.Command {
	var f cryptFlags
	cmd := &cobra.Command{
		Use:     "decrypt",
		Short:   "Decrypt data made by encrypt (the key ring is read from the envelope)",
		Example: `  credmatrix decrypt --context table=payments --in record.enc`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			encCtx, err := parsePairs("context", f.context)
			if err != nil {
				return err
			}
			ct, err := a.readInput(f.in)
			if err != nil {
				return err
			}
			if !f.binary {
				ct, err = base64.StdEncoding.DecodeString(strings.TrimSpace(string(ct)))
				if err != nil {
					return usagef("input is not base64 (use --binary for raw envelopes): %v", err)
				}
			}
			conn, err := a.dial(a.keyguardAddr)
			if err != nil {
				return err
			}
			defer conn.Close()
			pt, _, err := keyguardclient.New(conn).Decrypt(cmd.Context(), ct, encCtx)
			if err != nil {
				return err
			}
			return a.writeOutput(f.out, pt)
		},
	}
	f.register(cmd)
	return cmd
}
