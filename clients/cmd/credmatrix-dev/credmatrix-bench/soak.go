package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/procstack"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
)

// soakOp is one kind of call of the mix.
type soakOp struct {
	name   string
	weight int
	want   codes.Code // OK, or the denial it must get
	call   func(ctx context.Context, w *soakWorker) error
}

// soakStats counts one kind of call.
type soakStats struct {
	mu    sync.Mutex
	calls int
	errs  map[string]int // unexpected outcomes by message
	lat   []time.Duration
}

// snapshot is a service's resources at one moment.
type snapshot struct {
	rss        float64
	goroutines int
	fds        int
}

type soakFlags struct {
	common
	duration time.Duration
	warm     time.Duration
	rate     int
	workers  int
}

func runSoak(ctx context.Context, args []string, out, errw io.Writer, getenv func(string) string) error {
	def, err := envDuration(getenv, "SOAK", 10*time.Minute)
	if err != nil {
		return err
	}
	var f soakFlags
	fs := flag.NewFlagSet("credmatrix-bench soak", flag.ContinueOnError)
	fs.SetOutput(errw)
	f.register(fs)
	fs.DurationVar(&f.duration, "duration", def, "how long the mixed load runs after warm-up (env SOAK)")
	fs.DurationVar(&f.warm, "warmup", 0, "load before the start snapshot (default: a tenth of -duration, 10s to 60s)")
	fs.IntVar(&f.rate, "rate", 200, "calls per second, all kinds together (paced: the soak looks for leaks, not for the ceiling)")
	fs.IntVar(&f.workers, "workers", 8, "concurrent callers")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	if f.rate < 1 || f.workers < 1 {
		return usageError{errors.New("-rate and -workers must be at least 1")}
	}
	if f.warm == 0 {
		f.warm = min(max(f.duration/10, 10*time.Second), time.Minute)
	}
	dir, cleanup, err := f.prepare()
	if err != nil {
		return err
	}
	defer cleanup()
	fmt.Fprintf(errw, "credmatrix-bench soak: starting audit, broker and keyguard from %s (state in %s; load average %.2f)\n", f.binDir, dir, loadAvg())
	stack, err := procstack.Start(ctx, procstack.Config{BinDir: f.binDir, StateDir: dir, LogLevel: f.logLevel})
	if err != nil {
		return err
	}
	s := &soaker{stack: stack, f: f, out: out, errw: errw, stats: map[string]*soakStats{}}
	runErr := s.run(ctx)
	closeErr := stack.Close()
	if closeErr != nil {
		closeErr = fmt.Errorf("stopping the stack: %w", closeErr)
	}
	return errors.Join(runErr, closeErr)
}

type soaker struct {
	stack     *procstack.Stack
	f         soakFlags
	out, errw io.Writer
	ops       []soakOp
	stats     map[string]*soakStats
	behind    atomic.Int64 // ticks skipped because every worker was busy
}

// soakWorker is one caller: its own connections and token.
type soakWorker struct {
	broker   brokerv1.BrokerServiceClient
	keyguard keyguardv1.KeyguardServiceClient
	audit    auditv1.AuditServiceClient
	issuer   *devissuer.Issuer
	id       int
	token    string
	minted   time.Time
	sealed   [][]byte // recent ciphertexts with their plaintexts
	plain    [][]byte
	rnd      *mrand.Rand
}

// tokenNow returns the worker's token, minted again every two minutes (a
// CI job's token lives minutes, not the whole soak).
func (w *soakWorker) tokenNow() (string, error) {
	if w.token == "" || time.Since(w.minted) > 2*time.Minute {
		tok, err := w.issuer.Mint(devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", fmt.Sprint(5000+w.id), "credmatrix"), 10*time.Minute)
		if err != nil {
			return "", err
		}
		w.token, w.minted = tok, time.Now()
	}
	return w.token, nil
}

var soakContext = map[string]string{"table": "soak"}

func (s *soaker) mix() []soakOp {
	return []soakOp{
		{"issue_session", 25, codes.OK, func(ctx context.Context, w *soakWorker) error {
			tok, err := w.tokenNow()
			if err != nil {
				return err
			}
			resp, err := w.broker.IssueSession(ctx, &brokerv1.IssueSessionRequest{Token: tok, Targets: []*brokerv1.SessionTarget{{Role: "deploy", Account: "sandbox"}}})
			if err == nil && len(resp.GetSessions()) != 1 {
				return fmt.Errorf("IssueSession returned %d sessions, want 1", len(resp.GetSessions()))
			}
			return err
		}},
		// main-branch tokens may not reach prod: no rule allows it.
		{"issue_denied", 10, codes.PermissionDenied, func(ctx context.Context, w *soakWorker) error {
			tok, err := w.tokenNow()
			if err != nil {
				return err
			}
			_, err = w.broker.IssueSession(ctx, &brokerv1.IssueSessionRequest{Token: tok, Targets: []*brokerv1.SessionTarget{{Role: "deploy", Account: "prod"}}})
			return err
		}},
		{"encrypt", 25, codes.OK, func(ctx context.Context, w *soakWorker) error {
			p := make([]byte, 256+w.rnd.IntN(1024))
			rand.Read(p)
			resp, err := w.keyguard.Encrypt(ctx, &keyguardv1.EncryptRequest{DataClass: "confidential", Region: "eu-west-1", Plaintext: p, EncryptionContext: soakContext})
			if err != nil {
				return err
			}
			if len(w.sealed) >= 32 {
				i := w.rnd.IntN(len(w.sealed))
				w.sealed[i], w.plain[i] = resp.GetCiphertext(), p
			} else {
				w.sealed, w.plain = append(w.sealed, resp.GetCiphertext()), append(w.plain, p)
			}
			return nil
		}},
		{"decrypt", 25, codes.OK, func(ctx context.Context, w *soakWorker) error {
			if len(w.sealed) == 0 {
				return nil // nothing encrypted yet: counted as done
			}
			i := w.rnd.IntN(len(w.sealed))
			resp, err := w.keyguard.Decrypt(ctx, &keyguardv1.DecryptRequest{Ciphertext: w.sealed[i], EncryptionContext: soakContext})
			if err == nil && !bytes.Equal(resp.GetPlaintext(), w.plain[i]) {
				return errors.New("decrypt returned a different plaintext")
			}
			return err
		}},
		// No grant for confidential data in us-east-1.
		{"encrypt_denied", 5, codes.PermissionDenied, func(ctx context.Context, w *soakWorker) error {
			_, err := w.keyguard.Encrypt(ctx, &keyguardv1.EncryptRequest{DataClass: "confidential", Region: "us-east-1", Plaintext: []byte("x"), EncryptionContext: soakContext})
			return err
		}},
		{"audit_query", 10, codes.OK, func(ctx context.Context, w *soakWorker) error {
			req := &auditv1.QueryRequest{PageSize: 20, Subject: "repo:acme/app:ref:refs/heads/main"}
			if w.rnd.IntN(2) == 0 {
				req = &auditv1.QueryRequest{PageSize: 20, Kinds: []auditv1.Kind{auditv1.Kind_KIND_KEY_ENCRYPT}, StartTime: nil}
			}
			_, err := w.audit.Query(ctx, req)
			return err
		}},
	}
}

func (s *soaker) run(ctx context.Context) error {
	s.ops = s.mix()
	total := 0
	for _, o := range s.ops {
		total += o.weight
		s.stats[o.name] = &soakStats{errs: map[string]int{}}
	}
	workers := make([]*soakWorker, s.f.workers)
	for i := range workers {
		bc, err := s.stack.Dial("broker", "cli")
		if err != nil {
			return err
		}
		kc, err := s.stack.Dial("keyguard", "cli")
		if err != nil {
			return err
		}
		ac, err := s.stack.Dial("audit", "cli")
		if err != nil {
			return err
		}
		defer bc.Close()
		defer kc.Close()
		defer ac.Close()
		workers[i] = &soakWorker{
			broker: brokerv1.NewBrokerServiceClient(bc), keyguard: keyguardv1.NewKeyguardServiceClient(kc), audit: auditv1.NewAuditServiceClient(ac),
			issuer: s.stack.Issuer, id: i, rnd: mrand.New(mrand.NewPCG(uint64(i), uint64(time.Now().UnixNano()))),
		}
	}

	fmt.Fprintf(s.out, "soak: %d calls/s over %d callers for %s after %s of warm-up (load average %.2f)\n", s.f.rate, s.f.workers, s.f.duration, s.f.warm, loadAvg())
	fmt.Fprintf(s.out, "mix: %s\n", s.describeMix(total))
	if err := s.load(ctx, workers, total, s.f.warm, false); err != nil {
		return err
	}
	start, err := s.snapshots(ctx)
	if err != nil {
		return err
	}
	s.printSnapshots("start", start)
	for _, st := range s.stats { // count the measured part only
		st.calls, st.lat, st.errs = 0, nil, map[string]int{}
	}
	s.behind.Store(0)
	if err := s.load(ctx, workers, total, s.f.duration, true); err != nil {
		return err
	}
	end, err := s.snapshots(ctx)
	if err != nil {
		return err
	}
	s.printSnapshots("end", end)
	return s.report(start, end)
}

func (s *soaker) describeMix(total int) string {
	var parts []string
	for _, o := range s.ops {
		p := fmt.Sprintf("%s %d%%", o.name, o.weight*100/total)
		if o.want != codes.OK {
			p += " (must be " + o.want.String() + ")"
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ", ")
}

// load paces calls at the rate for d, then waits for the calls in
// flight, so that a snapshot after it sees an idle stack.
func (s *soaker) load(ctx context.Context, workers []*soakWorker, total int, d time.Duration, progress bool) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	ticks := make(chan struct{}, len(workers))
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Go(func() {
			for range ticks {
				s.one(ctx, w, total)
			}
		})
	}
	interval := time.Second / time.Duration(s.f.rate)
	t := time.NewTicker(interval)
	report := time.NewTicker(time.Minute)
	defer report.Stop()
	began := time.Now()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-t.C:
			select {
			case ticks <- struct{}{}:
			default:
				s.behind.Add(1)
			}
		case <-report.C:
			if progress {
				s.progress(ctx, time.Since(began))
			}
		}
	}
	t.Stop()
	close(ticks)
	wg.Wait()
	for _, p := range s.stack.Procs {
		select {
		case <-p.Exited():
			return fmt.Errorf("%s exited during the soak: %v\n%s", p.Name, p.ExitErr(), procstack.Tail(p.LogFile, 20))
		default:
		}
	}
	return nil
}

// one makes one call of the mix, picked by weight.
func (s *soaker) one(ctx context.Context, w *soakWorker, total int) {
	n := w.rnd.IntN(total)
	var o soakOp
	for _, o = range s.ops {
		if n < o.weight {
			break
		}
		n -= o.weight
	}
	// Each call has its own deadline, so the end of the load does not
	// cancel calls half way (they would count as errors).
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	t0 := time.Now()
	err := o.call(cctx, w)
	d := time.Since(t0)
	cancel()
	st := s.stats[o.name]
	st.mu.Lock()
	defer st.mu.Unlock()
	st.calls++
	st.lat = append(st.lat, d)
	switch got := status.Code(err); {
	case err == nil && o.want == codes.OK:
	case err != nil && got == o.want && o.want != codes.OK:
	case err == nil:
		st.errs[fmt.Sprintf("succeeded, want %s", o.want)]++
	default:
		st.errs[fmt.Sprintf("%s: %s", got, status.Convert(err).Message())]++
	}
}

// snapshots takes each service's resources with the stack idle: the
// smallest of three readings half a second apart, so a request's
// goroutine still on its way out does not count.
func (s *soaker) snapshots(ctx context.Context) (map[string]snapshot, error) {
	out := map[string]snapshot{}
	for i := range 3 {
		if i > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(500 * time.Millisecond):
			}
		}
		for _, name := range procstack.Services {
			p := s.stack.Procs[name]
			rss, err := rssMiB(p.Pid())
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			g, err := goroutines(ctx, p.MetricsURL)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			fds, err := openFDs(p.Pid())
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			cur, seen := out[name]
			if !seen {
				out[name] = snapshot{rss, g, fds}
				continue
			}
			out[name] = snapshot{min(cur.rss, rss), min(cur.goroutines, g), min(cur.fds, fds)}
		}
	}
	return out, nil
}

func (s *soaker) printSnapshots(when string, snaps map[string]snapshot) {
	var parts []string
	for _, name := range procstack.Services {
		sn := snaps[name]
		parts = append(parts, fmt.Sprintf("%s rss=%.1fMiB goroutines=%d fds=%d", name, sn.rss, sn.goroutines, sn.fds))
	}
	fmt.Fprintf(s.out, "soak %s (idle, load average %.2f): %s\n", when, loadAvg(), strings.Join(parts, "; "))
}

func (s *soaker) progress(ctx context.Context, elapsed time.Duration) {
	calls, errs := 0, 0
	for _, st := range s.stats {
		st.mu.Lock()
		calls += st.calls
		for _, n := range st.errs {
			errs += n
		}
		st.mu.Unlock()
	}
	var parts []string
	for _, name := range procstack.Services {
		p := s.stack.Procs[name]
		rss, _ := rssMiB(p.Pid())
		g, _ := goroutines(ctx, p.MetricsURL)
		fds, _ := openFDs(p.Pid())
		parts = append(parts, fmt.Sprintf("%s %.1fMiB/%dg/%dfd", name, rss, g, fds))
	}
	fmt.Fprintf(s.out, "soak %s: %d calls, %d unexpected, %d ticks behind; %s; load average %.2f\n",
		elapsed.Round(time.Second), calls, errs, s.behind.Load(), strings.Join(parts, ", "), loadAvg())
}

// report prints the per-service resources and per-call outcomes and
// returns an error when a call went wrong or a resource grew.
func (s *soaker) report(start, end map[string]snapshot) error {
	var problems []string
	fmt.Fprintln(s.out)
	for _, name := range procstack.Services {
		a, b := start[name], end[name]
		growth := 100 * (b.rss - a.rss) / a.rss
		fmt.Fprintf(s.out, "SOAK %s rss_mib_start=%.1f rss_mib_end=%.1f rss_growth_pct=%.1f goroutines_start=%d goroutines_end=%d fds_start=%d fds_end=%d\n",
			name, a.rss, b.rss, growth, a.goroutines, b.goroutines, a.fds, b.fds)
		if growth > 10 {
			problems = append(problems, fmt.Sprintf("%s RSS grew %.1f%% (limit 10%%)", name, growth))
		}
		if b.goroutines > a.goroutines {
			problems = append(problems, fmt.Sprintf("%s goroutines grew from %d to %d", name, a.goroutines, b.goroutines))
		}
		if b.fds > a.fds {
			problems = append(problems, fmt.Sprintf("%s open files grew from %d to %d", name, a.fds, b.fds))
		}
	}
	fmt.Fprintln(s.out)
	tw := tabwriter.NewWriter(s.out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "call\tcalls\tcalls/s\tp50 ms\tp99 ms\tunexpected\t")
	names := make([]string, 0, len(s.stats))
	for n := range s.stats {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		st := s.stats[n]
		slices.Sort(st.lat)
		q := func(p float64) float64 {
			if len(st.lat) == 0 {
				return math.NaN()
			}
			return float64(st.lat[int(p*float64(len(st.lat)-1))]) / float64(time.Millisecond)
		}
		bad := 0
		for msg, k := range st.errs {
			bad += k
			problems = append(problems, fmt.Sprintf("%s: %d× %s", n, k, msg))
		}
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.2f\t%.2f\t%d\t\n", n, st.calls, float64(st.calls)/s.f.duration.Seconds(), q(0.5), q(0.99), bad)
	}
	tw.Flush()
	if b := s.behind.Load(); b > 0 {
		fmt.Fprintf(s.out, "%d ticks skipped because every caller was busy (the stack fell behind the rate)\n", b)
	}
	sort.Strings(problems)
	if len(problems) > 0 {
		fmt.Fprintf(s.out, "\nsoak FAILED:\n  %s\n", strings.Join(problems, "\n  "))
		return fmt.Errorf("soak: %d problem(s)", len(problems))
	}
	fmt.Fprintf(s.out, "\nsoak passed: no unexpected outcome, RSS growth within 10%%, no goroutine or open-file growth (load average %.2f)\n", loadAvg())
	return nil
}
