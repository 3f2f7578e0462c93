package main

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer collects output written from several goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// cli runs the credmatrix CLI in-process with exactly the environment in
// env. Tests that need running services are in the credmatrix-dev module
// (e2e), which runs the built binary against the local stack.
type cli struct {
	t          *testing.T
	env        map[string]string
	transcript *syncBuffer
}

type result struct {
	code           int
	stdout, stderr string
}

func (c *cli) run(stdin string, args ...string) result {
	c.t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := run(ctx, args, streams{in: strings.NewReader(stdin), out: &out, err: &errb}, func(k string) string { return c.env[k] })
	if c.transcript != nil {
		c.transcript.Write(errb.Bytes())
	}
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}
