//go:build cluster

package clustertest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/deploy/internal/testissuer"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"
)

// trials of each propagation measurement.
const trials = 100

// record is one request of the load.
type record struct {
	kind       string // "issue" or "encrypt"
	frozenAcct bool   // an issuance in the account the freeze trials freeze
	start, end time.Time
	code       codes.Code
}

// load runs issuers and encryptors against the replicas until stopped,
// recording every request.
type load struct {
	mu   sync.Mutex
	recs []record
	stop chan struct{}
	wg   sync.WaitGroup
}

func (l *load) add(r record) {
	l.mu.Lock()
	l.recs = append(l.recs, r)
	l.mu.Unlock()
}

func (l *load) records() []record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.recs)
}

func (l *load) halt() {
	close(l.stop)
	l.wg.Wait()
}

// startLoad runs issuers workers issuing sessions (the first always in
// acct-0, the account the freeze trials freeze) and encryptors workers
// encrypting, each pausing pause between requests, round robin over the
// replicas.
func (s *stack) startLoad(t *testing.T, issuers, encryptors int, pause time.Duration) *load {
	l := &load{stop: make(chan struct{})}
	e := s.e
	broker := brokerv1.NewBrokerServiceClient(e.dial(t, addrs(s.brokers)))
	keyguard := keyguardv1.NewKeyguardServiceClient(e.dial(t, addrs(s.keyguards)))
	issueTok := e.token(t, "credmatrix", testissuer.Subject, "acme")
	encTok := e.token(t, keyguardAudience, testissuer.Subject, "acme")
	run := func(f func() record) {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				l.add(f())
				if pause > 0 {
					select {
					case <-l.stop:
						return
					case <-time.After(pause):
					}
				}
			}
		}()
	}
	for w := range issuers {
		run(func() record {
			acct, role := 0, 0
			if w > 0 {
				acct, role = 1+rand.IntN(accounts-1), rand.IntN(rolesPerAccount)
			}
			r := record{kind: "issue", frozenAcct: acct == 0, start: time.Now()}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := broker.IssueSession(ctx, &brokerv1.IssueSessionRequest{Token: issueTok,
				Targets: []*brokerv1.SessionTarget{{Role: fmt.Sprintf("role-%d", role), Account: fmt.Sprintf("acct-%d", acct)}}})
			cancel()
			r.end, r.code = time.Now(), status.Code(err)
			return r
		})
	}
	for range encryptors {
		run(func() record {
			r := record{kind: "encrypt", start: time.Now()}
			ctx, cancel := context.WithTimeout(bearer(context.Background(), encTok), 10*time.Second)
			_, err := keyguard.Encrypt(ctx, &keyguardv1.EncryptRequest{DataClass: "confidential", Region: region, Plaintext: []byte("load"),
				EncryptionContext: map[string]string{"tenant": "acme"}})
			cancel()
			r.end, r.code = time.Now(), status.Code(err)
			return r
		})
	}
	return l
}

func bearer(ctx context.Context, tok string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
}

// token mints a token for aud with subject sub and repository owner owner,
// valid for an hour.
func (e *env) token(t *testing.T, aud, sub, owner string) string {
	return e.issuer.Token(t, aud, func(c map[string]any) {
		c["sub"], c["repository_owner"], c["repository"] = sub, owner, owner+"/app"
		c["exp"] = time.Now().Add(time.Hour).Unix()
	})
}

// propagation collects, per trial and replica, the time from a call's
// return to the first answer reflecting it, and the answers that did not.
type propagation struct {
	name  string
	lat   []time.Duration
	stale int
	n     int
}

func (p *propagation) add(d time.Duration, fresh bool) {
	p.n++
	if fresh {
		p.lat = append(p.lat, d)
	} else {
		p.stale++
	}
}

func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// probeAll calls probe at every replica at once, right after a call
// returned at ret, and records how long each took to answer and whether
// the answer reflected the call.
func probeAll(p *propagation, ret time.Time, replicas int, probe func(i int) bool) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := range replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fresh := probe(i)
			d := time.Since(ret)
			mu.Lock()
			p.add(d, fresh)
			mu.Unlock()
		}()
	}
	wg.Wait()
}

// window is a span of time during which a decision must hold.
type window struct{ from, to time.Time }

func TestCluster(t *testing.T) {
	e := newEnv(t)
	s := e.startStack(t, stackOpts{name: "cluster", audits: 2, brokers: 3, keyguard: 2, state: "postgres"})
	var report strings.Builder
	fmt.Fprintf(&report, "\ncredmatrix cluster test: %d brokers, %d keyguards, %d audit replicas on one PostgreSQL cluster (load average at start: %s)\n",
		len(s.brokers), len(s.keyguards), len(s.audits), loadavg())

	brokers := make([]brokerv1.BrokerServiceClient, len(s.brokers))
	for i, p := range s.brokers {
		brokers[i] = brokerv1.NewBrokerServiceClient(e.dial(t, []string{p.addr}))
	}
	keyguards := make([]keyguardv1.KeyguardServiceClient, len(s.keyguards))
	for i, p := range s.keyguards {
		keyguards[i] = keyguardv1.NewKeyguardServiceClient(e.dial(t, []string{p.addr}))
	}
	ctx := context.Background()
	call := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 30*time.Second) }
	issueTok := e.token(t, "credmatrix", testissuer.Subject, "acme")
	issue := func(b int, tok, role, acct string) codes.Code {
		c, cancel := call()
		defer cancel()
		_, err := brokers[b].IssueSession(c, &brokerv1.IssueSessionRequest{Token: tok, Targets: []*brokerv1.SessionTarget{{Role: role, Account: acct}}})
		return status.Code(err)
	}

	l := s.startLoad(t, 4, 4, 10*time.Millisecond)
	loadStopped := false
	defer func() {
		if !loadStopped {
			l.halt()
		}
	}()

	// Freeze and unfreeze: 100 trials, each at another replica.
	freeze, unfreeze := &propagation{name: "freeze"}, &propagation{name: "unfreeze"}
	var frozen []window
	for i := range trials {
		c, cancel := call()
		_, err := brokers[i%len(brokers)].FreezeAccount(c, &brokerv1.FreezeAccountRequest{Account: "acct-0", Reason: fmt.Sprintf("trial %d", i)})
		cancel()
		ret := time.Now()
		if err != nil {
			t.Fatalf("FreezeAccount: %v", err)
		}
		probeAll(freeze, ret, len(brokers), func(b int) bool { return issue(b, issueTok, "role-0", "acct-0") == codes.PermissionDenied })
		to := time.Now()
		c, cancel = call()
		_, err = brokers[(i+1)%len(brokers)].UnfreezeAccount(c, &brokerv1.UnfreezeAccountRequest{Account: "acct-0", Reason: fmt.Sprintf("trial %d over", i)})
		cancel()
		frozen = append(frozen, window{from: ret, to: to})
		ret = time.Now()
		if err != nil {
			t.Fatalf("UnfreezeAccount: %v", err)
		}
		probeAll(unfreeze, ret, len(brokers), func(b int) bool { return issue(b, issueTok, "role-0", "acct-0") == codes.OK })
	}

	// Revocations: 100 subjects, each revoked at one replica (its role's
	// IAM policy rewritten), probed at every replica.
	revoke := &propagation{name: "revoke"}
	revTokens := make([]string, trials)
	for i := range trials {
		revTokens[i] = e.token(t, "credmatrix", fmt.Sprintf("repo:acme/revoked-%d:ref:refs/heads/main", i), "acme")
	}
	if code := issue(0, revTokens[0], "role-1", "acct-0"); code != codes.OK {
		t.Fatalf("before its revocation, a revocation trial's token is refused: %v", code)
	}
	for i := range trials {
		c, cancel := call()
		_, err := brokers[i%len(brokers)].RevokeSessions(c, &brokerv1.RevokeSessionsRequest{
			Subject: fmt.Sprintf("repo:acme/revoked-%d:ref:refs/heads/main", i), Role: "role-1", AccountId: accountID(0), Reason: "trial"})
		cancel()
		ret := time.Now()
		if err != nil {
			t.Fatalf("RevokeSessions: %v", err)
		}
		probeAll(revoke, ret, len(brokers), func(b int) bool { return issue(b, revTokens[i], "role-1", "acct-0") == codes.PermissionDenied })
	}

	// Grant revocations: a grant created at one keyguard, used at the
	// other, revoked there, probed at both.
	grants := &propagation{name: "grant revocation"}
	grantNotVisible := 0
	for i := range trials {
		sub := fmt.Sprintf("grant-probe-%d", i)
		tok := e.token(t, keyguardAudience, sub, "acme")
		encrypt := func(k int) codes.Code {
			c, cancel := call()
			defer cancel()
			_, err := keyguards[k].Encrypt(bearer(c, tok), &keyguardv1.EncryptRequest{DataClass: "confidential", Region: region, Plaintext: []byte("x")})
			return status.Code(err)
		}
		a, b := i%len(keyguards), (i+1)%len(keyguards)
		c, cancel := call()
		g, err := keyguards[a].CreateGrant(c, &keyguardv1.CreateGrantRequest{Grant: &keyguardv1.Grant{
			Principal: e.issuer.URL() + "#" + sub, DataClass: "confidential", Regions: []string{region},
			Operations: []keyguardv1.Operation{keyguardv1.Operation_OPERATION_ENCRYPT}, ExpireTime: timestamppb.New(time.Now().Add(time.Hour))}})
		cancel()
		if err != nil {
			t.Fatalf("CreateGrant: %v", err)
		}
		if encrypt(b) != codes.OK {
			grantNotVisible++
		}
		c, cancel = call()
		_, err = keyguards[b].RevokeGrant(c, &keyguardv1.RevokeGrantRequest{GrantId: g.GetGrant().GetGrantId(), Reason: "trial"})
		cancel()
		ret := time.Now()
		if err != nil {
			t.Fatalf("RevokeGrant: %v", err)
		}
		probeAll(grants, ret, len(keyguards), func(k int) bool { return encrypt(k) == codes.PermissionDenied })
	}
	if grantNotVisible > 0 {
		t.Errorf("%d of %d grants created at one keyguard were refused at the other right after CreateGrant returned", grantNotVisible, trials)
	}

	// Policy reloads: the file toggles a rule for the reload probe; each
	// reload is asked of one replica and probed at every one.
	reload := &propagation{name: "policy reload"}
	probeTok := e.token(t, "credmatrix", "repo:reload-probe/app:ref:refs/heads/main", "reload-probe")
	for i := range trials {
		allowed := i%2 == 0
		e.writePolicy(allowed)
		c, cancel := call()
		_, err := brokers[i%len(brokers)].ReloadPolicy(c, &brokerv1.ReloadPolicyRequest{})
		cancel()
		ret := time.Now()
		if err != nil {
			t.Fatalf("ReloadPolicy: %v", err)
		}
		want := codes.PermissionDenied
		if allowed {
			want = codes.OK
		}
		probeAll(reload, ret, len(brokers), func(b int) bool { return issue(b, probeTok, "role-0", "acct-0") == want })
	}
	e.writePolicy(false)

	// Kill -9 and restart each kind of process under the load.
	type outage struct {
		name                  string
		took                  time.Duration
		issued, issueFailed   int
		encrypt, encryptFaild int
	}
	var outages []outage
	seq, follower := s.sequencer(t)
	for _, victim := range []struct {
		name string
		p    *proc
	}{{"broker-1", s.brokers[0]}, {"keyguard-1", s.keyguards[0]}, {"audit sequencer (" + seq.name + ")", seq}, {"audit follower (" + follower.name + ")", follower}} {
		from := time.Now()
		victim.p.kill()
		victim.p.start(t)
		e.waitServing(t, victim.p, "")
		up := time.Now()
		time.Sleep(time.Second) // measure a second of service after the restart too
		to := time.Now()
		o := outage{name: victim.name, took: up.Sub(from)}
		for _, r := range l.records() {
			if r.start.Before(from) || r.start.After(to) {
				continue
			}
			if r.kind == "issue" {
				o.issued++
				if r.code != codes.OK && !(r.frozenAcct && r.code == codes.PermissionDenied) {
					o.issueFailed++
				}
			} else {
				o.encrypt++
				if r.code != codes.OK {
					o.encryptFaild++
				}
			}
		}
		outages = append(outages, o)
		time.Sleep(time.Second) // let connections settle before the next
	}

	l.halt()
	loadStopped = true
	recs := l.records()

	// Sessions issued in acct-0 for requests sent after a freeze returned
	// and answered before the unfreeze was called: must be none. Requests
	// in flight at the freeze's return, or still in flight when the
	// unfreeze was called, are concurrent with those calls and counted
	// apart.
	issuedWhileFrozen, frozenAttempts, concurrent := 0, 0, 0
	for _, r := range recs {
		if !r.frozenAcct {
			continue
		}
		for _, w := range frozen {
			switch {
			case r.start.After(w.from) && r.end.Before(w.to):
				frozenAttempts++
				if r.code == codes.OK {
					issuedWhileFrozen++
					t.Errorf("session issued in frozen acct-0: request sent %s after the freeze returned, answered %s before the unfreeze was called",
						r.start.Sub(w.from), w.to.Sub(r.end))
				}
			case r.code == codes.OK && (r.start.Before(w.from) && r.end.After(w.from) || r.start.Before(w.to) && r.end.After(w.to)):
				concurrent++
			}
		}
	}

	// The IAM deny on every role: one revocation covering all 100 roles.
	putsBefore, throttledBefore := e.aws.Calls("PutRolePolicy"), e.aws.Throttled("PutRolePolicy")
	c, cancel := context.WithTimeout(ctx, 2*time.Minute)
	start := time.Now()
	res, err := brokers[0].RevokeSessions(c, &brokerv1.RevokeSessionsRequest{Subject: "repo:acme/iam-test:ref:refs/heads/main", Reason: "100 roles"})
	iamTook := time.Since(start)
	cancel()
	if err != nil {
		t.Fatalf("RevokeSessions on every role: %v", err)
	}
	if res.GetRolesUpdated() != accounts*rolesPerAccount {
		t.Errorf("RevokeSessions on every role updated %d roles, want %d", res.GetRolesUpdated(), accounts*rolesPerAccount)
	}
	puts, throttled := e.aws.Calls("PutRolePolicy")-putsBefore, e.aws.Throttled("PutRolePolicy")-throttledBefore

	// The report.
	fmt.Fprintf(&report, "\npropagation (%d trials; time from the call's return to the first answer reflecting it, at each replica)\n", trials)
	fmt.Fprintf(&report, "  %-18s %8s %8s %8s %10s\n", "change", "answers", "p50", "p99", "stale")
	for _, p := range []*propagation{freeze, unfreeze, revoke, grants, reload} {
		fmt.Fprintf(&report, "  %-18s %8d %8s %8s %10d\n", p.name, p.n, ms(percentile(p.lat, 0.5)), ms(percentile(p.lat, 0.99)), p.stale)
		if p.stale > 0 {
			t.Errorf("%s: %d answers after the call returned did not reflect it", p.name, p.stale)
		}
	}
	fmt.Fprintf(&report, "\nload in the frozen account: sessions issued for requests sent after a freeze returned and answered before the unfreeze was called: %d of %d (must be 0); sessions of requests concurrent with a freeze or unfreeze call: %d\n",
		issuedWhileFrozen, frozenAttempts, concurrent)
	fmt.Fprintf(&report, "\nkill -9 and restart under load (load: 4 issuers, 4 encryptors; window from the kill to 1 s after the restarted process serves)\n")
	fmt.Fprintf(&report, "  %-28s %9s %18s %18s\n", "process", "down for", "issuances failed", "encrypts failed")
	for _, o := range outages {
		fmt.Fprintf(&report, "  %-28s %9s %18s %18s\n", o.name, ms(o.took), fmt.Sprintf("%d of %d", o.issueFailed, o.issued), fmt.Sprintf("%d of %d", o.encryptFaild, o.encrypt))
	}
	total, failed := 0, 0
	byCode := map[string]int{}
	for _, r := range recs {
		total++
		if r.code != codes.OK && !(r.frozenAcct && r.code == codes.PermissionDenied) {
			failed++
			byCode[r.kind+" "+r.code.String()]++
		}
	}
	var codesSeen []string
	for k, n := range byCode {
		codesSeen = append(codesSeen, fmt.Sprintf("%s: %d", k, n))
	}
	slices.Sort(codesSeen)
	fmt.Fprintf(&report, "  whole run (trials, kills and all): %d load requests, %d failed (%s)\n", total, failed, strings.Join(codesSeen, ", "))
	fmt.Fprintf(&report, "\nIAM deny on %d roles (%d accounts) in one RevokeSessions: %s, %d PutRolePolicy calls, %d throttled (IAM endpoint: %d calls/s per account, burst %d)\n",
		res.GetRolesUpdated(), accounts, ms(iamTook), puts, throttled, iamRate, iamBurst)

	s.stopAll()
	cpuReport(t, e, &report)
	fmt.Print(report.String())
	if path := os.Getenv("CREDMATRIX_CLUSTER_REPORT"); path != "" {
		writeFile(t, path, report.String())
	}
}

func (s *stack) stopAll() {
	for _, p := range append(append(append([]*proc{}, s.brokers...), s.keyguards...), s.audits...) {
		p.stop()
	}
}

func ms(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
	return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000)
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// cpuReport measures the CPU cost of an issuance and an Encrypt with one
// replica each on SQLite, and with one and two on PostgreSQL: CPU seconds
// of the service processes (and of PostgreSQL, audit and local-kms) per
// operation, over a fixed number of operations by 8 concurrent callers.
func cpuReport(t *testing.T, e *env, report *strings.Builder) {
	const ops, callers = 1000, 8
	pgPID := postmasterPID(t, e.pg.Port())
	fmt.Fprintf(report, "\nCPU per operation (%d operations, %d concurrent callers; audit on SQLite in each; ms of CPU per operation; load average %s)\n", ops, callers, loadavg())
	fmt.Fprintf(report, "  %-22s %-9s %9s %9s %9s %9s %9s\n", "setup", "operation", "service", "postgres", "audit", "local-kms", "total")
	for _, o := range []stackOpts{
		{name: "cpu-sqlite", brokers: 1, keyguard: 1, state: "sqlite"},
		{name: "cpu-pg-1", brokers: 1, keyguard: 1, state: "postgres"},
		{name: "cpu-pg-2", brokers: 2, keyguard: 2, state: "postgres"},
	} {
		s := e.startStack(t, o)
		broker := brokerv1.NewBrokerServiceClient(e.dial(t, addrs(s.brokers)))
		keyguard := keyguardv1.NewKeyguardServiceClient(e.dial(t, addrs(s.keyguards)))
		issueTok := e.token(t, "credmatrix", testissuer.Subject, "acme")
		encTok := e.token(t, keyguardAudience, testissuer.Subject, "acme")
		issue := func(c context.Context) error {
			_, err := broker.IssueSession(c, &brokerv1.IssueSessionRequest{Token: issueTok, Targets: []*brokerv1.SessionTarget{{Role: "role-2", Account: "acct-3"}}})
			return err
		}
		encrypt := func(c context.Context) error {
			_, err := keyguard.Encrypt(bearer(c, encTok), &keyguardv1.EncryptRequest{DataClass: "confidential", Region: region, Plaintext: []byte("cpu")})
			return err
		}
		for _, op := range []struct {
			name string
			do   func(context.Context) error
			svc  []*proc
		}{{"issuance", issue, s.brokers}, {"encrypt", encrypt, s.keyguards}} {
			runOps(t, 50, callers, op.do) // warm up: connections, caches
			svc := func() float64 {
				var sum float64
				for _, p := range op.svc {
					sum += cpuSeconds(p.pid(), false)
				}
				return sum
			}
			s0, p0, a0, k0 := svc(), cpuSeconds(pgPID, true), cpuSeconds(s.audits[0].pid(), false), cpuSeconds(e.kmsPID, false)
			runOps(t, ops, callers, op.do)
			s1, p1, a1, k1 := svc(), cpuSeconds(pgPID, true), cpuSeconds(s.audits[0].pid(), false), cpuSeconds(e.kmsPID, false)
			per := func(a, b float64) float64 { return (b - a) * 1000 / ops }
			fmt.Fprintf(report, "  %-22s %-9s %9.3f %9.3f %9.3f %9.3f %9.3f\n", fmt.Sprintf("%s (%d %s%s)", o.state, len(op.svc), op.svc[0].kind, map[bool]string{true: "s"}[len(op.svc) > 1]),
				op.name, per(s0, s1), per(p0, p1), per(a0, a1), per(k0, k1), per(s0+p0+a0+k0, s1+p1+a1+k1))
		}
		s.stopAll()
	}
}

// runOps performs n operations with callers concurrent callers; any
// failure fails the test.
func runOps(t *testing.T, n, callers int, do func(context.Context) error) {
	t.Helper()
	work := make(chan struct{}, n)
	for range n {
		work <- struct{}{}
	}
	close(work)
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				err := do(ctx)
				cancel()
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("operation: %v", err)
	}
}
