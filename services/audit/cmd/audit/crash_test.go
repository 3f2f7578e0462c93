package main_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/credmatrix/credmatrix/clients/auditclient/bundle"
	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"
	"github.com/credmatrix/credmatrix/clients/auditclient/verify"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/audittest"
)

// buildAudit compiles this command into a temp dir.
func buildAudit(t *testing.T) string {
	t.Helper()
	// go test puts the running toolchain's bin first on PATH.
	bin := filepath.Join(t.TempDir(), "audit")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

var addrRE = regexp.MustCompile(`"serving gRPC".*"addr":"(127\.0\.0\.1:\d+)"`)

// startAudit runs the audit binary on dir's files and returns its address
// once it serves. The process is killed when the test ends.
func startAudit(t *testing.T, bin, dir string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(bin,
		"--server.listen-addr", "127.0.0.1:0", "--server.dev-plaintext",
		"--db-path", filepath.Join(dir, "audit.db"),
		"--checkpoint.key-file", filepath.Join(dir, "checkpoint.key"), "--checkpoint.generate-key")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	found := make(chan string, 1)
	var logs syncLog
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logs.add(sc.Text())
			if m := addrRE.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	select {
	case addr := <-found:
		return cmd, addr
	case <-time.After(60 * time.Second):
		t.Fatalf("audit did not start within 60s; its log:\n%s", logs.String())
	}
	return nil, ""
}

type syncLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *syncLog) add(s string) { l.mu.Lock(); l.lines = append(l.lines, s); l.mu.Unlock() }
func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprint(l.lines)
}

func dial(t *testing.T, addr string) auditv1.AuditServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return auditv1.NewAuditServiceClient(conn)
}

// TestCrashSafety appends from several goroutines to the audit service
// running as a child process, kills it with SIGKILL mid-stream, restarts
// it on the same files, and checks that every acknowledged event is there
// at its acknowledged sequence, the sequence has no gap, and the whole log
// verifies against its signed checkpoint.
func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the audit binary")
	}
	bin := buildAudit(t)
	dir := t.TempDir()
	cmd, addr := startAudit(t, bin, dir)
	client := dial(t, addr)

	const writers = 8
	acked := make([]map[string]uint64, writers)
	var total atomic.Int64
	killed := make(chan struct{})
	reached := make(chan struct{}) // closed at the 500th acknowledgement
	var reachedOnce sync.Once
	var wg sync.WaitGroup
	for w := range writers {
		acked[w] = map[string]uint64{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				id := fmt.Sprintf("crash-%d-%d", w, i)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				resp, err := client.Append(ctx, &auditv1.AppendRequest{Events: []*auditv1.Event{audittest.BenchEvent(id)}})
				cancel()
				if err != nil {
					select {
					case <-killed:
						return // the server is gone: stop
					default:
						t.Errorf("Append before the kill: %v", err)
						return
					}
				}
				acked[w][id] = resp.GetResults()[0].GetSequence()
				if total.Add(1) >= 500 {
					reachedOnce.Do(func() { close(reached) })
				}
			}
		}()
	}
	// Kill -9 once enough events are acknowledged, mid-stream.
	select {
	case <-reached:
	case <-time.After(60 * time.Second):
		t.Errorf("only %d appends acknowledged within 60s", total.Load())
	}
	close(killed)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	wg.Wait()
	if total.Load() == 0 {
		t.Fatal("no append was acknowledged before the kill")
	}

	_, addr = startAudit(t, bin, dir)
	client = dial(t, addr)
	ctx := context.Background()
	var events []*auditv1.Event
	req := &auditv1.QueryRequest{PageSize: audit.MaxPageSize}
	for {
		resp, err := client.Query(ctx, req)
		if err != nil {
			t.Fatalf("Query after restart: %v", err)
		}
		events = append(events, resp.GetEvents()...)
		if resp.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.GetNextPageToken()
	}
	byID := map[string]uint64{}
	for i, e := range events {
		if e.GetSequence() != uint64(i) {
			t.Fatalf("event %d has sequence %d: a gap after the crash", i, e.GetSequence())
		}
		byID[e.GetId()] = e.GetSequence()
	}
	lost := 0
	for w := range writers {
		for id, seq := range acked[w] {
			if got, ok := byID[id]; !ok || got != seq {
				lost++
				if lost < 5 {
					t.Errorf("acknowledged event %s at %d: after restart present=%v at %d", id, seq, ok, got)
				}
			}
		}
	}
	t.Logf("%d events acknowledged before kill -9, %d stored after restart, %d lost", total.Load(), len(events), lost)

	// The tree verifies: a fresh checkpoint over everything, checked with
	// the public key the service wrote.
	pub, err := os.ReadFile(filepath.Join(dir, "checkpoint.key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := checkpoint.NewVerifier(string(pub))
	if err != nil {
		t.Fatal(err)
	}
	cp, err := client.GetCheckpoint(ctx, &auditv1.GetCheckpointRequest{})
	if err != nil {
		t.Fatalf("GetCheckpoint: %v", err)
	}
	b := &bundle.Bundle{Origin: cp.GetOrigin(), PublicKey: v.PublicKey(), Checkpoints: [][]byte{cp.GetSignedNote()}}
	for _, e := range events[:cp.GetTreeSize()] {
		data, err := leaf.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		b.Events = append(b.Events, data)
	}
	if r := verify.Bundle(b, verify.Options{Key: v}); !r.OK() {
		t.Fatalf("the log does not verify after the crash: %s", r.Problem)
	}
}
