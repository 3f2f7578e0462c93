package auditsink

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
)

type fakeAudit struct {
	auditv1.UnimplementedAuditServiceServer
	fail error
	got  []*auditv1.Event
}

func (f *fakeAudit) Append(_ context.Context, req *auditv1.AppendRequest) (*auditv1.AppendResponse, error) {
	if f.fail != nil {
		return nil, f.fail
	}
	resp := &auditv1.AppendResponse{}
	for _, ev := range req.GetEvents() {
		resp.Results = append(resp.Results, &auditv1.AppendResult{Id: ev.GetId(), Sequence: uint64(len(f.got))})
		f.got = append(f.got, ev)
	}
	return resp, nil
}

func dial(t *testing.T, srv auditv1.AuditServiceServer) *grpc.ClientConn {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	s := grpc.NewServer()
	auditv1.RegisterAuditServiceServer(s, srv)
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestAppend(t *testing.T) {
	f := &fakeAudit{}
	c := New(dial(t, f))
	res, err := c.Append(context.Background(), &auditv1.Event{Id: "e1"})
	if err != nil {
		t.Fatal(err)
	}
	if res.GetId() != "e1" || len(f.got) != 1 {
		t.Fatalf("got result %v, %d events stored; want e1 and 1", res, len(f.got))
	}
}

func TestAppendUnavailable(t *testing.T) {
	f := &fakeAudit{fail: status.Error(codes.Unavailable, "disk full")}
	c := New(dial(t, f))
	_, err := c.Append(context.Background(), &auditv1.Event{Id: "e1"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v, want an error carrying codes.Unavailable", err)
	}
}

func TestHasher(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	h, err := NewHasher(key)
	if err != nil {
		t.Fatal(err)
	}
	a := h.Ref("session_token", []byte("tok-1"))
	b := h.Ref("session_token", []byte("tok-1"))
	c := h.Ref("session_token", []byte("tok-2"))
	if !bytes.Equal(a.GetHmacSha256(), b.GetHmacSha256()) || bytes.Equal(a.GetHmacSha256(), c.GetHmacSha256()) {
		t.Fatal("HMAC must be deterministic per value and differ between values")
	}
	if a.GetKeyId() != h.KeyID() || !strings.HasPrefix(h.KeyID(), "hmac-sha256:") {
		t.Fatalf("key id %q", a.GetKeyId())
	}
	other, _ := NewHasher(bytes.Repeat([]byte{8}, 32))
	if other.KeyID() == h.KeyID() {
		t.Fatal("different keys must have different key ids")
	}
	for _, s := range []string{h.String(), fmt.Sprintf("%v %+v %#v", h, h, h)} {
		if strings.Contains(s, string(key)) || strings.Contains(s, "7, 7") || strings.Contains(s, "0707") {
			t.Fatalf("hasher formatting leaks the key: %s", s)
		}
	}
	if _, err := NewHasher(key[:31]); err == nil {
		t.Fatal("short key accepted")
	}
}
