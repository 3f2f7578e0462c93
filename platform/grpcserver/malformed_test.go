package grpcserver_test

import (
	"bytes"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	"context"

	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
)

// rawCodec sends and receives wire bytes as they are, as a client that
// does not check its messages would.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

// TestMalformedRequest: a request that does not decode gets
// INVALID_ARGUMENT (gRPC's own answer is INTERNAL), naming the message
// type and not echoing the bytes; no interceptor after the decode check
// and no handler sees it; a well-formed request on the same connection
// still works, on unary and streaming methods.
func TestMalformedRequest(t *testing.T) {
	var seen atomic.Int64
	count := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		seen.Add(1)
		return handler(ctx, req)
	}
	countStream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		seen.Add(1)
		return handler(srv, ss)
	}
	r := startServer(t, grpcserver.Config{ListenAddr: "127.0.0.1:0", DevPlaintext: true}, identityService(),
		grpcserver.WithUnaryInterceptors(count), grpcserver.WithStreamInterceptors(countStream))
	conn := dial(t, grpcclient.Config{Target: r.srv.Addr().String(), DevPlaintext: true})
	ctx := callCtx(t)

	// HealthCheckRequest.service is field 1, a string.
	bad := map[string][]byte{
		"invalid-utf8":      append([]byte{0x0a, 0x06}, "ab\xff\xfecd"...),
		"truncated-length":  {0x0a, 0x20, 'a', 'b'},
		"invalid-wire-type": {0x0f, 0x01},
		"truncated-varint":  {0x08, 0xff},
	}
	for name, in := range bad {
		t.Run(name, func(t *testing.T) {
			before := seen.Load()
			var out []byte
			err := conn.Invoke(ctx, "/grpc.health.v1.Health/Check", &in, &out, grpc.ForceCodecV2(rawCodec{}))
			checkMalformed(t, err, in)

			st, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/grpc.health.v1.Health/Watch", grpc.ForceCodecV2(rawCodec{}))
			if err != nil {
				t.Fatal(err)
			}
			if err := st.SendMsg(&in); err != nil {
				t.Fatal(err)
			}
			if err := st.CloseSend(); err != nil {
				t.Fatal(err)
			}
			err = st.RecvMsg(&out)
			checkMalformed(t, err, in)
			// The stream interceptor runs once per stream; the unary
			// one never ran for the malformed Check.
			if got := seen.Load() - before; got != 1 {
				t.Errorf("interceptors after the decode check ran %d times, want 1 (the stream's, which the handler then failed)", got)
			}
		})
	}

	// The connection and the server are fine afterwards.
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("well-formed Check after malformed ones: %v, %v", resp, err)
	}
	if line := r.logs.find(t, "rpc", "/grpc.health.v1.Health/Check"); line == nil || line["code"] != "InvalidArgument" {
		t.Errorf("request log line for the malformed Check = %v, want code InvalidArgument", line)
	}
}

func checkMalformed(t *testing.T, err error, in []byte) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.InvalidArgument {
		t.Fatalf("error = %v, want InvalidArgument", err)
	}
	if !strings.Contains(st.Message(), "does not decode as grpc.health.v1.HealthCheckRequest") {
		t.Errorf("message = %q, want it to name the message type", st.Message())
	}
	if strings.ContainsRune(st.Message(), '\ufffd') || strings.Contains(st.Message(), "\xff") || strings.Contains(st.Message(), "ab") && bytes.Contains(in, []byte("ab")) {
		t.Errorf("message %q echoes the request", st.Message())
	}
}
