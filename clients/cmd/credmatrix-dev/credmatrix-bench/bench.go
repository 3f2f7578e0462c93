package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/clients/auditclient"
	"github.com/credmatrix/credmatrix/clients/auditclient/bundle"
	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"
	"github.com/credmatrix/credmatrix/clients/auditclient/replay"
	"github.com/credmatrix/credmatrix/clients/auditclient/verify"
	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/devstack"
	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/procstack"
	"github.com/credmatrix/credmatrix/platform/auditappend"
	"github.com/credmatrix/credmatrix/platform/metrics"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
)

// Callers: 16 concurrent CI jobs or app instances, 64 audit producers'
// requests, as the issue's goals state them.
const (
	callers       = 16
	appendCallers = 64
)

// figureNames are the figures in the order they run (and print).
var figureNames = []string{"noop", "issue_session", "encrypt_1k", "batch_encrypt_100x1k", "audit_append_64", "verify_replay"}

// figure is one measured line.
type figure struct {
	name  string
	m     measured
	rss   map[string]float64 // peak MiB per service during the figure
	rssOf []string           // the services whose peak the BENCH line reports
	ratio bool               // report ops/s over the no-op baseline's
	unit  string
	load  [2]float64               // 1-minute load average before and after
	cpu   map[string]time.Duration // CPU time per process ("client": this one) in the measured window
	goal  string
	extra string
}

func (f *figure) rssMiB() float64 {
	var m float64
	for _, s := range f.rssOf {
		m = max(m, f.rss[s])
	}
	return m
}

type benchFlags struct {
	common
	duration     time.Duration
	warm         time.Duration
	only         string
	verifyEvents int
	profileDir   string
}

func runBench(ctx context.Context, args []string, out, errw io.Writer, getenv func(string) string) error {
	def, err := envDuration(getenv, "BENCH_DURATION", 20*time.Second)
	if err != nil {
		return err
	}
	var f benchFlags
	fs := flag.NewFlagSet("credmatrix-bench", flag.ContinueOnError)
	fs.SetOutput(errw)
	f.register(fs)
	fs.DurationVar(&f.duration, "duration", def, "measured time of each figure (env BENCH_DURATION)")
	fs.DurationVar(&f.warm, "warmup", 0, "unmeasured load before each figure (default: a fifth of -duration, at most 3s)")
	fs.StringVar(&f.only, "only", "", "comma-separated figures to run (default: all): "+strings.Join(figureNames, ","))
	fs.IntVar(&f.verifyEvents, "verify-events", 200_000, "most events of the log verify_replay verifies (the first ones, up to a signed checkpoint)")
	fs.StringVar(&f.profileDir, "profile", "", "write CPU profiles of every service and of this process during each figure's measured window (at most 12s of it) to this directory as <figure>-<process>.pprof (the services serve them with metrics.pprof; profiling costs a little throughput)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	if f.warm == 0 {
		f.warm = min(f.duration/5, 3*time.Second)
	}
	want := map[string]bool{}
	for _, n := range strings.Split(f.only, ",") {
		if n = strings.TrimSpace(n); n == "" {
			continue
		}
		if !contains(figureNames, n) {
			return usageError{fmt.Errorf("-only %q: unknown figure (want %s)", n, strings.Join(figureNames, ","))}
		}
		want[n] = true
	}
	if len(want) == 0 {
		for _, n := range figureNames {
			want[n] = true
		}
	}

	dir, cleanup, err := f.prepare()
	if err != nil {
		return err
	}
	defer cleanup()
	fmt.Fprintf(errw, "credmatrix-bench: starting audit, broker and keyguard from %s (state in %s; load average %.2f)\n", f.binDir, dir, loadAvg())
	var adjust func(*devstack.Configs)
	if f.profileDir != "" {
		if err := os.MkdirAll(f.profileDir, 0o755); err != nil {
			return err
		}
		adjust = func(c *devstack.Configs) {
			c.Audit.Metrics.Pprof, c.Broker.Metrics.Pprof, c.Keyguard.Metrics.Pprof = true, true, true
		}
	}
	stack, err := procstack.Start(ctx, procstack.Config{BinDir: f.binDir, StateDir: dir, LogLevel: f.logLevel, Adjust: adjust})
	if err != nil {
		return err
	}
	b := &bencher{stack: stack, f: f, errw: errw}
	runErr := b.runAll(ctx, want)
	closeErr := stack.Close()
	b.print(out)
	if runErr != nil || closeErr != nil {
		if f.stateDir == "" && !f.keep {
			fmt.Fprintf(errw, "credmatrix-bench: rerun with -keep to keep the services' logs\n")
		}
	}
	return errors.Join(runErr, closeErr)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

type bencher struct {
	stack    *procstack.Stack
	f        benchFlags
	errw     io.Writer
	figures  []*figure
	conns    []*grpc.ClientConn
	profiles sync.WaitGroup // profiles being taken
}

// dialN opens n connections to service as identity: each caller has its
// own, as separate CI jobs and app instances do.
func (b *bencher) dialN(service, identity string, n int) ([]*grpc.ClientConn, error) {
	conns := make([]*grpc.ClientConn, n)
	for i := range conns {
		c, err := b.stack.Dial(service, identity)
		if err != nil {
			return nil, err
		}
		b.conns = append(b.conns, c)
		conns[i] = c
	}
	return conns, nil
}

func (b *bencher) runAll(ctx context.Context, want map[string]bool) error {
	defer func() {
		for _, c := range b.conns {
			c.Close()
		}
	}()
	steps := map[string]func(context.Context) (*figure, error){
		"noop": b.noop, "issue_session": b.issueSession, "encrypt_1k": b.encrypt1k,
		"batch_encrypt_100x1k": b.batchEncrypt, "audit_append_64": b.auditAppend, "verify_replay": b.verifyReplay,
	}
	var errs []error
	for _, name := range figureNames {
		if !want[name] {
			continue
		}
		fmt.Fprintf(b.errw, "credmatrix-bench: %s (%s + %s warm-up; load average %.2f)\n", name, b.f.duration, b.f.warm, loadAvg())
		fig, err := steps[name](ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if fig.m.err != nil {
			errs = append(errs, fmt.Errorf("%s: %d call(s) failed, the first: %w", name, fig.m.errs, fig.m.err))
		}
		b.figures = append(b.figures, fig)
		for _, p := range b.stack.Procs {
			select {
			case <-p.Exited():
				return errors.Join(append(errs, fmt.Errorf("%s exited during %s: %v\n%s", p.Name, name, p.ExitErr(), procstack.Tail(p.LogFile, 20)))...)
			default:
			}
		}
	}
	return errors.Join(errs...)
}

// measure runs o under the sampler and records the load average and the
// CPU time every process used in the measured window.
func (b *bencher) measure(ctx context.Context, name string, n int, o op) *figure {
	fig := &figure{name: name}
	fig.load[0] = loadAvg()
	s := startSampler(b.stack.Procs, 200*time.Millisecond)
	begin := time.Now()
	cpu := make(chan map[string]time.Duration, 1)
	go func() {
		// CPU times at the start and the end of the measured window.
		t := time.NewTimer(time.Until(begin.Add(b.f.warm)))
		defer t.Stop()
		select {
		case <-ctx.Done():
			cpu <- nil
			return
		case <-t.C:
		}
		first := cpuTimes(b.stack.Procs)
		if b.f.profileDir != "" {
			b.profile(ctx, name, min(b.f.duration, metrics.MaxProfileSeconds*time.Second))
		}
		t.Reset(time.Until(begin.Add(b.f.warm + b.f.duration)))
		select {
		case <-ctx.Done():
			cpu <- nil
			return
		case <-t.C:
		}
		last := cpuTimes(b.stack.Procs)
		for k, v := range last {
			last[k] = v - first[k]
		}
		cpu <- last
	}()
	fig.m = driveFrom(ctx, begin, n, b.f.warm, b.f.duration, o)
	fig.cpu = <-cpu
	b.profiles.Wait()
	fig.rss = s.Stop()
	fig.load[1] = loadAvg()
	return fig
}

// profile starts CPU profiles of every service and of this process for d
// and writes them to the profile directory when done.
func (b *bencher) profile(ctx context.Context, figure string, d time.Duration) {
	sec := max(int(d/time.Second), 1)
	for name, p := range b.stack.Procs {
		url := strings.TrimSuffix(p.MetricsURL, metrics.Path) + metrics.PprofPath + fmt.Sprintf("profile?seconds=%d", sec)
		file := filepath.Join(b.f.profileDir, figure+"-"+name+".pprof")
		b.profiles.Go(func() {
			if err := fetchTo(ctx, url, file); err != nil {
				fmt.Fprintf(b.errw, "credmatrix-bench: profile of %s: %v\n", name, err)
			}
		})
	}
	file := filepath.Join(b.f.profileDir, figure+"-client.pprof")
	f, err := os.Create(file)
	if err != nil {
		fmt.Fprintf(b.errw, "credmatrix-bench: %v\n", err)
		return
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		fmt.Fprintf(b.errw, "credmatrix-bench: profile of this process: %v\n", err)
		return
	}
	b.profiles.Go(func() {
		t := time.NewTimer(time.Duration(sec) * time.Second)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		pprof.StopCPUProfile()
		f.Close()
	})
}

// fetchTo saves what url answers to file.
func fetchTo(ctx context.Context, url, file string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s: %s", url, resp.Status, strings.TrimSpace(string(msg)))
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// cpuPerUnit is the CPU time of a process per unit, in microseconds.
func (f *figure) cpuPerUnit(proc string) (float64, bool) {
	d, ok := f.cpu[proc]
	if !ok || f.m.units == 0 {
		return 0, false
	}
	return float64(d.Microseconds()) / float64(f.m.units), true
}

func (b *bencher) noop(ctx context.Context) (*figure, error) {
	conns, err := b.dialN("broker", "cli", callers)
	if err != nil {
		return nil, err
	}
	clients := make([]healthpb.HealthClient, len(conns))
	for i, c := range conns {
		clients[i] = healthpb.NewHealthClient(c)
	}
	fig := b.measure(ctx, "noop", callers, func(ctx context.Context, c int) (int, error) {
		_, err := clients[c].Check(ctx, &healthpb.HealthCheckRequest{})
		return 1, err
	})
	fig.rssOf, fig.ratio, fig.unit = []string{"broker"}, true, "calls"
	fig.extra = "gRPC health Check on the broker's mTLS port"
	return fig, nil
}

func (b *bencher) issueSession(ctx context.Context) (*figure, error) {
	conns, err := b.dialN("broker", "cli", callers)
	if err != nil {
		return nil, err
	}
	reqs := make([]*brokerv1.IssueSessionRequest, callers)
	clients := make([]brokerv1.BrokerServiceClient, callers)
	for i := range reqs {
		// One RS256 token per caller, as each CI job has its own.
		tok, err := b.stack.Issuer.Mint(devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", fmt.Sprint(1000+i), "credmatrix"), 2*time.Hour)
		if err != nil {
			return nil, err
		}
		reqs[i] = &brokerv1.IssueSessionRequest{Token: tok, Targets: []*brokerv1.SessionTarget{{Role: "deploy", Account: "sandbox"}}}
		clients[i] = brokerv1.NewBrokerServiceClient(conns[i])
	}
	fig := b.measure(ctx, "issue_session", callers, func(ctx context.Context, c int) (int, error) {
		_, err := clients[c].IssueSession(ctx, reqs[c])
		return 1, err
	})
	fig.rssOf, fig.ratio, fig.unit = []string{"broker", "audit"}, true, "sessions"
	fig.goal = ">= 8000/s, p99 <= 10 ms, ratio >= 0.33"
	return fig, nil
}

func (b *bencher) keyguardClients() ([]keyguardv1.KeyguardServiceClient, error) {
	conns, err := b.dialN("keyguard", "cli", callers)
	if err != nil {
		return nil, err
	}
	clients := make([]keyguardv1.KeyguardServiceClient, len(conns))
	for i, c := range conns {
		clients[i] = keyguardv1.NewKeyguardServiceClient(c)
	}
	return clients, nil
}

func encryptRequest() *keyguardv1.EncryptRequest {
	return &keyguardv1.EncryptRequest{DataClass: "confidential", Region: "eu-west-1", Plaintext: make([]byte, 1024), EncryptionContext: map[string]string{"table": "bench"}}
}

func (b *bencher) encrypt1k(ctx context.Context) (*figure, error) {
	clients, err := b.keyguardClients()
	if err != nil {
		return nil, err
	}
	req := encryptRequest()
	fig := b.measure(ctx, "encrypt_1k", callers, func(ctx context.Context, c int) (int, error) {
		_, err := clients[c].Encrypt(ctx, req)
		return 1, err
	})
	fig.rssOf, fig.ratio, fig.unit = []string{"keyguard", "audit"}, true, "records"
	fig.goal = ">= 13000/s, p99 <= 10 ms, ratio >= 0.5"
	return fig, nil
}

func (b *bencher) batchEncrypt(ctx context.Context) (*figure, error) {
	clients, err := b.keyguardClients()
	if err != nil {
		return nil, err
	}
	const n = 100
	req := &keyguardv1.BatchEncryptRequest{}
	for range n {
		req.Items = append(req.Items, encryptRequest())
	}
	fig := b.measure(ctx, "batch_encrypt_100x1k", callers, func(ctx context.Context, c int) (int, error) {
		_, err := clients[c].BatchEncrypt(ctx, req, grpc.MaxCallRecvMsgSize(8<<20))
		return n, err
	})
	fig.rssOf, fig.unit = []string{"keyguard", "audit"}, "records"
	fig.goal = ">= 100000 records/s"
	fig.extra = "latency is of one 100-record call"
	return fig, nil
}

// auditAppend: 64 producers' requests each record one event through one
// appender (platform/auditappend, the broker's and keyguard's) on one
// connection, as the broker's identity; durable before each returns.
func (b *bencher) auditAppend(ctx context.Context) (*figure, error) {
	conns, err := b.dialN("audit", "broker", 1)
	if err != nil {
		return nil, err
	}
	app := auditappend.New(conns[0])
	defer app.Close(context.WithoutCancel(ctx))
	run := time.Now().UnixNano()
	seq := make([]int, appendCallers)
	fig := b.measure(ctx, "audit_append_64", appendCallers, func(ctx context.Context, c int) (int, error) {
		seq[c]++
		_, err := app.Append(ctx, benchEvent(fmt.Sprintf("bench-%x-%d-%d", run, c, seq[c])))
		return 1, err
	})
	fig.rssOf, fig.unit = []string{"audit"}, "events"
	fig.goal = ">= 50000 events/s, p99 <= 20 ms"
	fig.extra = "through platform/auditappend (one connection, as a producer)"
	return fig, nil
}

// benchEvent is a realistic session-issue event as the broker sends it.
func benchEvent(id string) *auditv1.Event {
	return &auditv1.Event{
		Id:       id,
		Time:     timestamppb.Now(),
		Kind:     auditv1.Kind_KIND_SESSION_ISSUE,
		Decision: auditv1.Decision_DECISION_ALLOW,
		Reason:   "allowed by rule app-main-deploys-sandbox",
		Rule:     "app-main-deploys-sandbox",
		TraceId:  "4bf92f3577b34da6a3ce929d0e0e4736",
		SpanId:   "00f067aa0ba902b7",
		Actor: &auditv1.Actor{
			Principal: "https://token.actions.githubusercontent.com#repo:acme/app:ref:refs/heads/main",
			Issuer:    "https://token.actions.githubusercontent.com",
			Subject:   "repo:acme/app:ref:refs/heads/main",
			Claims:    map[string]string{"repository": "acme/app", "ref": "refs/heads/main", "run_id": "123456"},
		},
		Detail: &auditv1.Event_Session{Session: &auditv1.SessionDetail{
			AccountId: "111111111111", AccountName: "sandbox", RoleName: "deploy", Region: "eu-west-1",
			RoleArn: "arn:aws:iam::111111111111:role/deploy", SessionId: "s-" + id, AccessKeyId: "ASIAEXAMPLEEXAMPLE00",
			Provider: "local",
		}},
		SecretRefs: []*auditv1.SecretRef{{Name: "session_token", HmacSha256: make([]byte, 32), KeyId: "hmac-1"}},
	}
}

// verifyReplay exports the log the figures before wrote (its first
// events, up to the largest signed checkpoint within -verify-events) as a
// bundle, then measures what `credmatrix audit replay` does with such a
// file, offline, in this process: read, verify every leaf and the
// checkpoint, decode and replay.
func (b *bencher) verifyReplay(ctx context.Context) (*figure, error) {
	pub, err := os.ReadFile(b.stack.AuditPublicKeyFile())
	if err != nil {
		return nil, err
	}
	key, err := checkpoint.NewVerifier(strings.TrimSpace(string(pub)))
	if err != nil {
		return nil, err
	}
	raw, n, err := b.exportBundle(ctx, key)
	if err != nil {
		return nil, err
	}
	pass := func() error {
		got, err := bundle.Read(bytes.NewReader(raw))
		if err != nil {
			return err
		}
		// As 'credmatrix audit replay' does: verify, then replay the
		// leaves, decoding only what replay uses.
		r := verify.Bundle(got, verify.Options{Key: key, KeepLeaves: true})
		if !r.OK() {
			return fmt.Errorf("the exported log does not verify: %v", r.Problem)
		}
		rp := replay.New()
		for _, data := range r.Leaves {
			l, err := replay.ReadLeaf(data)
			if err != nil {
				return err
			}
			if err := rp.ApplyLeaf(l); err != nil {
				return err
			}
		}
		_ = rp.SessionsAt(time.Now(), replay.SessionFilter{})
		return nil
	}
	fig := &figure{name: "verify_replay", unit: "events", goal: ">= 1000000 events/s"}
	fig.extra = fmt.Sprintf("%d events, %.0f MiB bundle; latency is of one pass", n, float64(len(raw))/(1<<20))
	fig.load[0] = loadAvg()
	if b.f.profileDir != "" {
		if f, err := os.Create(filepath.Join(b.f.profileDir, "verify_replay-client.pprof")); err == nil && pprof.StartCPUProfile(f) == nil {
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	// One caller, passes back to back, at least one whole pass measured.
	fig.m = drive(ctx, 1, 0, max(b.f.duration, time.Second), func(context.Context, int) (int, error) {
		return n, pass()
	})
	if fig.m.calls == 0 && fig.m.err == nil {
		t0 := time.Now()
		err := pass()
		d := time.Since(t0)
		fig.m = measured{units: int64(n), calls: 1, elapsed: d, lat: []time.Duration{d}, err: err}
	}
	fig.load[1] = loadAvg()
	return fig, nil
}

// exportBundle fetches the first events of the log, up to the largest
// signed checkpoint of at most -verify-events events, as bundle bytes.
func (b *bencher) exportBundle(ctx context.Context, key *checkpoint.Verifier) ([]byte, int, error) {
	conns, err := b.dialN("audit", "cli", 1)
	if err != nil {
		return nil, 0, err
	}
	client := auditclient.New(conns[0])
	notes, err := client.Checkpoints(ctx, 1, uint64(b.f.verifyEvents))
	if err != nil {
		return nil, 0, err
	}
	if len(notes) == 0 {
		return nil, 0, errors.New("the audit log has no checkpoint yet (run the other figures first)")
	}
	cp, err := client.RPC().GetCheckpoint(ctx, &auditv1.GetCheckpointRequest{})
	if err != nil {
		return nil, 0, err
	}
	note := notes[len(notes)-1]
	size := sizeOfNote(note)
	if size == 0 {
		return nil, 0, fmt.Errorf("cannot read the tree size of checkpoint %q", firstLine(note))
	}
	bu := &bundle.Bundle{Origin: cp.GetOrigin(), PublicKey: key.PublicKey(), Checkpoints: [][]byte{note}}
	stop := errors.New("enough")
	err = client.Query(ctx, &auditv1.QueryRequest{}, func(e *auditv1.Event) error {
		if uint64(len(bu.Events)) == size {
			return stop
		}
		data, err := leaf.Marshal(e)
		if err != nil {
			return err
		}
		bu.Events = append(bu.Events, data)
		return nil
	})
	if err != nil && !errors.Is(err, stop) {
		return nil, 0, err
	}
	if uint64(len(bu.Events)) != size {
		return nil, 0, fmt.Errorf("the log returned %d events below its checkpoint of size %d", len(bu.Events), size)
	}
	var raw bytes.Buffer
	if err := bu.Write(&raw); err != nil {
		return nil, 0, err
	}
	return raw.Bytes(), len(bu.Events), nil
}

// sizeOfNote reads the tree size, the second line of a checkpoint note.
func sizeOfNote(note []byte) uint64 {
	lines := strings.SplitN(string(note), "\n", 3)
	if len(lines) < 2 {
		return 0
	}
	var n uint64
	if _, err := fmt.Sscan(lines[1], &n); err != nil {
		return 0
	}
	return n
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return s
}

// print writes the BENCH lines, then the table.
func (b *bencher) print(w io.Writer) {
	var base float64
	for _, f := range b.figures {
		if f.name == "noop" {
			base = f.m.perSecond()
		}
	}
	ratio := func(f *figure) float64 {
		if !f.ratio || base == 0 {
			return 0
		}
		return f.m.perSecond() / base
	}
	for _, f := range b.figures {
		fmt.Fprintf(w, "BENCH %s ops_per_s=%.0f p50_ms=%.2f p99_ms=%.2f rss_mib=%.1f baseline_ratio=%.2f\n",
			f.name, f.m.perSecond(), f.m.quantile(0.50), f.m.quantile(0.99), f.rssMiB(), ratio(f))
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "figure\tunits/s\tp50 ms\tp99 ms\tcalls\tratio\tRSS MiB broker\tkeyguard\taudit\tCPU µs/unit client\tbroker\tkeyguard\taudit\ttotal\tload avg\t goal\t")
	for _, f := range b.figures {
		rss := func(s string) string {
			if v, ok := f.rss[s]; ok {
				return fmt.Sprintf("%.1f", v)
			}
			return "-"
		}
		r := "-"
		if f.ratio && base > 0 {
			r = fmt.Sprintf("%.2f", ratio(f))
		}
		var total float64
		cpu := func(p string) string {
			v, ok := f.cpuPerUnit(p)
			if !ok {
				return "-"
			}
			total += v
			return fmt.Sprintf("%.0f", v)
		}
		cpus := []string{cpu("client"), cpu("broker"), cpu("keyguard"), cpu("audit")}
		tot := "-"
		if total > 0 {
			tot = fmt.Sprintf("%.0f", total)
		}
		fmt.Fprintf(tw, "%s\t%.0f %s\t%.2f\t%.2f\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.1f→%.1f\t %s\t\n",
			f.name, f.m.perSecond(), f.unit, f.m.quantile(0.50), f.m.quantile(0.99), f.m.calls, r,
			rss("broker"), rss("keyguard"), rss("audit"), cpus[0], cpus[1], cpus[2], cpus[3], tot, f.load[0], f.load[1], f.goal)
	}
	tw.Flush()
	fmt.Fprintf(w, "\n%d concurrent callers, each with its own mTLS connection (audit_append_64: %d callers through one appender); %s measured per figure after %s of warm-up.\n",
		callers, appendCallers, b.f.duration, b.f.warm)
	for _, f := range b.figures {
		if f.extra != "" {
			fmt.Fprintf(w, "  %s: %s\n", f.name, f.extra)
		}
	}
	fmt.Fprintf(w, "ratio = units/s over the no-op call's (same run). CPU µs/unit: user+system CPU time of each process in the measured window over the units done\n"+
		"(client: this load generator; on a busy machine this is the steadier figure: 2 cores sustain at most 2,000,000/total units/s).\n"+
		"Load average: the machine's 1-minute average before→after each figure (2 cores: above ~2 the figures are not representative).\n")
}
