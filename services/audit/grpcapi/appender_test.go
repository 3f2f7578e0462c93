package grpcapi_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/credmatrix/credmatrix/platform/auditappend"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/audittest"
	"github.com/credmatrix/credmatrix/services/audit/grpcapi"
	"github.com/credmatrix/credmatrix/services/audit/sqlite"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// heldService is the real audit service (SQLite, grpcapi) behind an
// interceptor that holds the first Append until released and records the
// event ids of every Append; legacy makes it drop refuse_individually, as
// a service from before per-event refusals would.
type heldService struct {
	store   *sqlite.Store
	entered chan struct{}
	release chan struct{}
	mu      sync.Mutex
	appends [][]string
}

func startHeld(t *testing.T, legacy bool) (*heldService, *grpc.ClientConn) {
	t.Helper()
	store, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "audit.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	log := audittest.OpenLog(t, store, audit.WithSigner(audittest.NewSigner(t)))
	h := &heldService{store: store, entered: make(chan struct{}), release: make(chan struct{})}
	hold := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		if r, ok := req.(*auditv1.AppendRequest); ok {
			if legacy {
				r.RefuseIndividually = false
			}
			var ids []string
			for _, e := range r.GetEvents() {
				ids = append(ids, e.GetId())
			}
			h.mu.Lock()
			h.appends = append(h.appends, ids)
			first := len(h.appends) == 1
			h.mu.Unlock()
			if first {
				close(h.entered)
				<-h.release
			}
		}
		return next(ctx, req)
	}
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(grpc.UnaryInterceptor(hold))
	auditv1.RegisterAuditServiceServer(srv, grpcapi.New(log))
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return h, conn
}

// TestAppenderAgainstTheService runs the producers' appender against the
// real audit service: while one Append is held, events of concurrent
// callers queue and leave in one request; the one holding a raw token is
// refused alone and every other caller's event is recorded, with a service
// that refuses per event and with one that refuses whole batches.
func TestAppenderAgainstTheService(t *testing.T) {
	jwt := "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOmFjbWUvYXBwIn0.c2lnbmF0dXJlLWJ5dGVzLWhlcmUtYW5kLW1vcmU"
	for _, legacy := range []bool{false, true} {
		t.Run(fmt.Sprint("legacy=", legacy), func(t *testing.T) {
			h, conn := startHeld(t, legacy)
			a := auditappend.New(conn, auditappend.WithConfig(auditappend.Config{MaxEvents: 100, MaxInFlight: 1}))
			plug := make(chan error, 1)
			go func() {
				_, err := a.Append(context.Background(), event("plug", auditv1.Kind_KIND_SESSION_ISSUE))
				plug <- err
			}()
			<-h.entered

			ids := []string{"i0", "i1", "hostile", "i2", "i3"}
			errs := make([]error, len(ids))
			var wg sync.WaitGroup
			for i, id := range ids {
				e := event(id, auditv1.Kind_KIND_SESSION_ISSUE)
				if id == "hostile" {
					e.Actor.RequestReason = "ship it " + jwt
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, errs[i] = a.Append(context.Background(), e)
				}()
			}
			deadline := time.Now().Add(10 * time.Second)
			for a.Queued() != len(ids) {
				if time.Now().After(deadline) {
					t.Fatalf("queued %d events, want %d", a.Queued(), len(ids))
				}
				time.Sleep(time.Millisecond)
			}
			close(h.release)
			wg.Wait()
			if err := <-plug; err != nil {
				t.Fatal(err)
			}

			for i, id := range ids {
				if wantRefused := id == "hostile"; errors.Is(errs[i], auditappend.ErrRefused) != wantRefused || (!wantRefused && errs[i] != nil) {
					t.Errorf("%s: Append = %v", id, errs[i])
				}
			}
			h.mu.Lock()
			shared := h.appends[1]
			h.mu.Unlock()
			if diff := cmp.Diff(shared, ids, cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
				t.Errorf("second Append carried (-got +want):\n%s", diff)
			}
			stored, err := h.store.Read(context.Background(), 0, 100)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range stored {
				got = append(got, e.GetId())
			}
			if diff := cmp.Diff(got, []string{"plug", "i0", "i1", "i2", "i3"}, cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
				t.Errorf("stored (-got +want):\n%s", diff)
			}
		})
	}
}
