package main_test

import (
	"bufio"
	"context"
	"database/sql"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	_ "modernc.org/sqlite"

	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/platform/pgtest"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/audittest"
	"github.com/credmatrix/credmatrix/services/audit/largelog"
	"github.com/credmatrix/credmatrix/services/audit/postgres"
	"github.com/credmatrix/credmatrix/services/audit/sqlite"
	"github.com/credmatrix/credmatrix/services/audit/tiles"
)

// The large-log benchmark. CI runs it with a small log; by hand, for the
// figures at 10 million events (keep the log to rerun the measurements):
//
//	go test -run TestLargeLog -timeout 3h -v ./services/audit/cmd/audit/ \
//	    -largelog.events 10000000 -largelog.dir /var/tmp/largelog -largelog.append 20s
var (
	llEvents  = flag.Uint64("largelog.events", 20000, "events in the large log")
	llDir     = flag.String("largelog.dir", "", "directory that keeps the log between runs (default: a temp dir); a log already there with enough events is reused")
	llProofs  = flag.Int("largelog.proofs", 500, "inclusion and consistency proofs to time")
	llAppend  = flag.Duration("largelog.append", 2*time.Second, "how long to time durable appends, at the large size and on an empty log")
	llCallers = flag.Int("largelog.callers", 64, "concurrent appenders")
	llStore   = flag.String("largelog.store", "sqlite", "store to measure: sqlite or postgres (a throwaway cluster; needs PostgreSQL installed)")
)

// largeBackend is the store under measurement.
type largeBackend struct {
	// args are the audit binary's store flags.
	args []string
	// open opens the store for the bulk load.
	open func(t *testing.T) (head func() uint64, commit largelog.Commit, closeFn func())
	// sizes measures where the bytes go (the service stopped).
	sizes func(t *testing.T) storeSize
}

func sqliteBackend(db string) largeBackend {
	return largeBackend{
		args: []string{"--db-path", db},
		open: func(t *testing.T) (func() uint64, largelog.Commit, func()) {
			st, err := sqlite.Open(context.Background(), db)
			if err != nil {
				t.Fatal(err)
			}
			head := func() uint64 {
				h, err := st.Head(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				return h
			}
			return head, largeLogCommit(st), func() { st.Close() }
		},
		sizes: func(t *testing.T) storeSize { return storeSizes(t, db) },
	}
}

func postgresBackend(t *testing.T) largeBackend {
	dsn := pgtest.Start(t).NewDatabase(t)
	return largeBackend{
		args: []string{"--store", "postgres", "--postgres.dsn", dsn},
		open: func(t *testing.T) (func() uint64, largelog.Commit, func()) {
			ctx := context.Background()
			st, err := postgres.Open(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			select {
			case <-st.Sequencing():
			case <-time.After(time.Minute):
				t.Fatal("the bulk loader did not become the sequencer")
			}
			head := func() uint64 {
				h, err := st.Head(ctx)
				if err != nil {
					t.Fatal(err)
				}
				return h
			}
			commit := func(ctx context.Context, records []audit.Record, cp audit.StoredCheckpoint, ts []tiles.Tile) error {
				return appendIndexed(ctx, st, records, cp, ts)
			}
			return head, commit, func() { st.Close() }
		},
		sizes: func(t *testing.T) storeSize { return postgresSizes(t, dsn) },
	}
}

// TestLargeLog builds (or reuses) a large log in a SQLite store through
// the store's own commit path (events, full tiles and a signed checkpoint
// per batch of 1,000), then runs the real audit binary on it and
// measures: start-up time, RSS, inclusion and consistency proof latency
// (every proof verified against the signed checkpoint), durable append
// throughput at that size against an empty log's in the same run, and
// bytes per event with where they go. It logs one LARGELOG line per
// figure (go test -v shows them). It asserts correctness only (proofs verify, appends succeed),
// never speed.
func TestLargeLog(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a log and runs the audit binary")
	}
	bin := buildAudit(t)
	dir := *llDir
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "checkpoint.key")
	signer := largeLogSigner(t, keyFile)
	var be largeBackend
	switch *llStore {
	case "sqlite":
		be = sqliteBackend(filepath.Join(dir, "audit.db"))
	case "postgres":
		be = postgresBackend(t)
	default:
		t.Fatalf("-largelog.store %q: want sqlite or postgres", *llStore)
	}
	ensureLargeLog(t, be, signer, *llEvents)
	n := *llEvents
	report := func(name string, format string, args ...any) {
		t.Logf("LARGELOG %s events=%d "+format, append([]any{name, n}, args...)...)
	}

	// Start-up: exec to serving, on the large log.
	start := time.Now()
	srv, addr := startLargeAudit(t, bin, keyFile, be.args...)
	startup := time.Since(start)
	rssStart := rss(t, srv.Process.Pid)
	report("startup", "seconds=%.3f rss_mib=%.1f", startup.Seconds(), rssStart.current)

	client := dial(t, addr)
	ctx := context.Background()
	cp, err := client.GetCheckpoint(ctx, &auditv1.GetCheckpointRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if cp.GetTreeSize() < n {
		t.Fatalf("checkpoint after start-up is at %d, the log holds %d", cp.GetTreeSize(), n)
	}
	size, root := cp.GetTreeSize(), cp.GetRootHash()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))

	incl := make([]time.Duration, 0, *llProofs)
	for range *llProofs {
		seq := rng.Uint64N(size)
		t0 := time.Now()
		p, err := client.GetInclusionProof(ctx, &auditv1.GetInclusionProofRequest{Sequence: seq, TreeSize: size})
		incl = append(incl, time.Since(t0))
		if err != nil {
			t.Fatalf("GetInclusionProof(%d, %d): %v", seq, size, err)
		}
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, seq, size, p.GetLeafHash(), p.GetHashes(), root); err != nil {
			t.Fatalf("inclusion proof of %d in %d does not verify: %v", seq, size, err)
		}
	}
	p50, p99 := percentiles(incl)
	report("inclusion_proof", "p50_ms=%.3f p99_ms=%.3f", p50, p99)

	cons := make([]time.Duration, 0, *llProofs)
	for range *llProofs {
		first := 1 + rng.Uint64N(size)
		t0 := time.Now()
		p, err := client.GetConsistencyProof(ctx, &auditv1.GetConsistencyProofRequest{FirstSize: first, SecondSize: size})
		cons = append(cons, time.Since(t0))
		if err != nil {
			t.Fatalf("GetConsistencyProof(%d, %d): %v", first, size, err)
		}
		if len(p.GetHashes()) == 0 && first != size {
			t.Fatalf("empty consistency proof from %d to %d", first, size)
		}
	}
	p50, p99 = percentiles(cons)
	report("consistency_proof", "p50_ms=%.3f p99_ms=%.3f", p50, p99)

	large := appendLoad(t, client, *llCallers, *llAppend, "large")
	rssEnd := rss(t, srv.Process.Pid)
	report("append_large", "events_per_s=%.0f p50_ms=%.3f p99_ms=%.3f", large.rate, large.p50, large.p99)
	report("rss", "after_startup_mib=%.1f after_load_mib=%.1f peak_mib=%.1f", rssStart.current, rssEnd.current, rssEnd.peak)
	stopAudit(t, srv)

	// The same appends on an empty log, same binary, same settings.
	emptyDir := t.TempDir()
	emptyKey := filepath.Join(emptyDir, "checkpoint.key")
	largeLogSigner(t, emptyKey)
	emptyArgs := sqliteBackend(filepath.Join(emptyDir, "audit.db")).args
	if *llStore == "postgres" {
		emptyArgs = postgresBackend(t).args
	}
	srv2, addr2 := startLargeAudit(t, bin, emptyKey, emptyArgs...)
	empty := appendLoad(t, dial(t, addr2), *llCallers, *llAppend, "empty")
	stopAudit(t, srv2)
	report("append_empty", "events_per_s=%.0f p50_ms=%.3f p99_ms=%.3f ratio_large_to_empty=%.3f", empty.rate, empty.p50, empty.p99, large.rate/empty.rate)

	// audit verify --db: every event re-hashed and every checkpoint
	// checked, offline, streaming the store (time and peak RSS).
	if *llStore == "sqlite" {
		pub := filepath.Join(dir, "checkpoint.key.pub")
		if err := os.WriteFile(pub, []byte(signer.PublicKey()+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		cmd := exec.Command(bin, "verify", "--db", filepath.Join(dir, "audit.db"), "--public-key-file", pub)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "verified: ") {
			t.Fatalf("audit verify --db: %v\n%s", err, out)
		}
		peak := float64(cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss) / 1024 // KiB on Linux
		report("verify_db", "seconds=%.1f peak_rss_mib=%.1f", time.Since(t0).Seconds(), peak)
	}

	sizes := be.sizes(t)
	total := sizes.db + sizes.wal
	report("bytes", "store=%s per_event=%.1f db=%d wal=%d", *llStore, float64(total)/float64(n), sizes.db, sizes.wal)
	for _, o := range sizes.objects {
		report("bytes_object", "name=%s per_event=%.1f", o.name, float64(o.bytes)/float64(n))
	}
}

// largeLogSigner writes a checkpoint key to keyFile (or reads the one
// there) and returns its signer.
func largeLogSigner(t *testing.T, keyFile string) *checkpoint.Signer {
	t.Helper()
	b, err := os.ReadFile(keyFile)
	if os.IsNotExist(err) {
		skey, _, err := checkpoint.GenerateKey(audittest.Origin)
		if err != nil {
			t.Fatal(err)
		}
		b = []byte(skey + "\n")
		if err := os.WriteFile(keyFile, b, 0o600); err != nil {
			t.Fatal(err)
		}
	} else if err != nil {
		t.Fatal(err)
	}
	s, err := checkpoint.NewSigner(string(b))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// ensureLargeLog builds the log of n events in the store unless it holds
// them.
func ensureLargeLog(t *testing.T, be largeBackend, signer *checkpoint.Signer, n uint64) {
	t.Helper()
	ctx := context.Background()
	headFn, commit, closeFn := be.open(t)
	defer closeFn()
	head := headFn()
	if head >= n {
		t.Logf("reusing the log of %d events", head)
		return
	}
	if head > 0 {
		t.Fatalf("the store holds %d events, fewer than %d: remove it to build anew", head, n)
	}
	last := time.Now()
	stats, err := largelog.Build(ctx, commit, tiles.New(noTiles{}), signer, largelog.Options{
		Events: n, Seed: 1, CheckpointEvery: 10000,
		Progress: func(done uint64) {
			if time.Since(last) > 10*time.Second {
				last = time.Now()
				t.Logf("built %d of %d events", done, n)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("LARGELOG build events=%d seconds=%.1f events_per_s=%.0f leaf_bytes_per_event=%.1f checkpoints=%d",
		n, stats.Elapsed.Seconds(), float64(n)/stats.Elapsed.Seconds(), float64(stats.LeafBytes)/float64(n), stats.Checkpoints)
}

// largeLogCommit is the store's commit of one batch as the Log makes it.
func largeLogCommit(st *sqlite.Store) largelog.Commit {
	return func(ctx context.Context, records []audit.Record, cp audit.StoredCheckpoint, ts []tiles.Tile) error {
		return appendIndexed(ctx, st, records, cp, ts)
	}
}

// appendIndexed commits a batch and its query index rows, as the Log and
// its indexer do (a bulk-loaded log with no index would have the service
// index it all at start-up, throttling appends meanwhile).
func appendIndexed(ctx context.Context, st audit.Store, records []audit.Record, cp audit.StoredCheckpoint, ts []tiles.Tile) error {
	if err := st.Append(ctx, audit.Batch{Records: records, Checkpoint: &cp, Tiles: ts}); err != nil {
		return err
	}
	rows := make([]audit.IndexRow, len(records))
	for i, r := range records {
		rows[i] = audit.IndexRowOf(r.Event)
	}
	return st.AddIndex(ctx, records[0].Event.GetSequence(), rows)
}

func startLargeAudit(t *testing.T, bin, keyFile string, storeArgs ...string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{
		"--server.listen-addr", "127.0.0.1:0", "--server.dev-plaintext",
		"--checkpoint.key-file", keyFile}, storeArgs...)...)
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
	exited := make(chan error, 1)
	go func() { _, err := cmd.Process.Wait(); exited <- err }()
	select {
	case addr := <-found:
		return cmd, addr
	case err := <-exited:
		t.Fatalf("audit exited before serving (%v); its log:\n%s", err, logs.String())
	case <-time.After(10 * time.Minute):
		t.Fatalf("audit did not start within 10 minutes; its log:\n%s", logs.String())
	}
	return nil, ""
}

func stopAudit(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Process.Wait()
}

type rssInfo struct{ current, peak float64 }

// rss reads the resident set size (VmRSS) and its peak (VmHWM) of pid, in
// MiB.
func rss(t *testing.T, pid int) rssInfo {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read RSS: %v", err)
	}
	var r rssInfo
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			r.current = kb / 1024
		case "VmHWM:":
			r.peak = kb / 1024
		}
	}
	return r
}

type loadResult struct{ rate, p50, p99 float64 }

// appendLoad appends one event per call from callers goroutines for d and
// returns events/s and the latency percentiles in ms.
func appendLoad(t *testing.T, client auditv1.AuditServiceClient, callers int, d time.Duration, tag string) loadResult {
	t.Helper()
	// A PostgreSQL replica takes the sequencer lock shortly after it
	// starts serving: wait for its first durable append.
	deadline := time.Now().Add(time.Minute)
	for i := 0; ; i++ {
		_, err := client.Append(context.Background(), &auditv1.AppendRequest{Events: []*auditv1.Event{audittest.BenchEvent(fmt.Sprintf("largelog-%s-warmup-%d-%d", tag, time.Now().UnixNano(), i))}})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no append succeeded within a minute: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var mu sync.Mutex
	var lat []time.Duration
	var failed atomic.Bool
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	start := time.Now()
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var l []time.Duration
			for i := 0; time.Now().Before(stop); i++ {
				e := audittest.BenchEvent(fmt.Sprintf("largelog-%s-%d-%d-%d", tag, start.UnixNano(), c, i))
				t0 := time.Now()
				if _, err := client.Append(context.Background(), &auditv1.AppendRequest{Events: []*auditv1.Event{e}}); err != nil {
					if failed.CompareAndSwap(false, true) {
						t.Errorf("Append: %v", err)
					}
					return
				}
				l = append(l, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, l...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	p50, p99 := percentiles(lat)
	return loadResult{rate: float64(len(lat)) / elapsed.Seconds(), p50: p50, p99: p99}
}

// percentiles returns the p50 and p99 of d in milliseconds.
func percentiles(d []time.Duration) (p50, p99 float64) {
	if len(d) == 0 {
		return 0, 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	at := func(q float64) float64 {
		return float64(s[min(len(s)-1, int(q*float64(len(s))))].Microseconds()) / 1000
	}
	return at(0.50), at(0.99)
}

type storeObject struct {
	name  string
	bytes int64
}

type storeSize struct {
	db, wal int64
	objects []storeObject
}

// storeSizes measures the store files and, with SQLite's dbstat, how the
// database's pages divide among tables and indexes. The store must not be
// open elsewhere.
func storeSizes(t *testing.T, db string) storeSize {
	t.Helper()
	var s storeSize
	if fi, err := os.Stat(db); err == nil {
		s.db = fi.Size()
	}
	if fi, err := os.Stat(db + "-wal"); err == nil {
		s.wal = fi.Size()
	}
	conn, err := sql.Open("sqlite", "file:"+db+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rows, err := conn.Query("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")
	if err != nil {
		t.Fatalf("dbstat: %v", err)
	}
	defer rows.Close()
	for rows.Next() {
		var o storeObject
		if err := rows.Scan(&o.name, &o.bytes); err != nil {
			t.Fatal(err)
		}
		s.objects = append(s.objects, o)
	}
	return s
}

// noTiles is the bulk loader's tree reader: building a log never reads
// stored tiles back.
type noTiles struct{}

func (noTiles) ReadTiles(_ context.Context, ids []tiles.ID) ([][]byte, error) {
	return make([][]byte, len(ids)), nil
}

// postgresSizes measures the audit relations of the database at dsn (each
// table with its TOAST, each index on its own). PostgreSQL's WAL is the
// cluster's and recycled: not counted.
func postgresSizes(t *testing.T, dsn string) storeSize {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "VACUUM ANALYZE"); err != nil {
		t.Fatal(err)
	}
	rows, err := conn.Query(ctx, `SELECT c.relname,
		CASE WHEN c.relkind = 'i' THEN pg_relation_size(c.oid) ELSE pg_table_size(c.oid) END
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i') ORDER BY 2 DESC`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var s storeSize
	for rows.Next() {
		var o storeObject
		if err := rows.Scan(&o.name, &o.bytes); err != nil {
			t.Fatal(err)
		}
		s.db += o.bytes
		s.objects = append(s.objects, o)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return s
}
