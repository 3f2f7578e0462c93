package grpcserver

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// A request that does not decode as its protobuf message — broken wire
// format, or a string field that is not UTF-8 — is the caller's mistake.
// grpc-go answers every codec failure with INTERNAL ("failed to unmarshal
// the received message"), before any interceptor runs, and INTERNAL tells
// clients the server failed: they retry it and page on it. So each
// server's codec records the failure against the message it could not
// fill and reports success, and the first interceptor after logging
// answers INVALID_ARGUMENT for that message instead. No handler, and no
// access check, ever sees a message that did not decode.

// decodeCodec is the server's protobuf codec.
type decodeCodec struct {
	base encoding.CodecV2
	// failed holds the messages the codec could not fill, until the
	// interceptor takes them; pending counts them so that the common case
	// costs one atomic load.
	failed  sync.Map // proto.Message → struct{}
	pending atomic.Int64
}

func newDecodeCodec() *decodeCodec {
	return &decodeCodec{base: encoding.GetCodecV2(protoenc.Name)}
}

func (c *decodeCodec) Name() string { return c.base.Name() }

func (c *decodeCodec) Marshal(v any) (mem.BufferSlice, error) { return c.base.Marshal(v) }

func (c *decodeCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.base.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return err // not a message gRPC generated code would pass: keep gRPC's answer
	}
	c.failed.Store(m, struct{}{})
	c.pending.Add(1)
	return nil
}

// take reports whether m is a message the codec could not fill, and
// forgets it.
func (c *decodeCodec) take(m any) error {
	if c.pending.Load() == 0 {
		return nil
	}
	pm, ok := m.(proto.Message)
	if !ok {
		return nil
	}
	if _, found := c.failed.LoadAndDelete(pm); !found {
		return nil
	}
	c.pending.Add(-1)
	// The message names the type only: the caller's bytes are not echoed.
	return status.Error(codes.InvalidArgument, fmt.Sprintf(
		"malformed request: it does not decode as %s (broken protobuf wire format, or a string field that is not valid UTF-8)",
		proto.MessageName(pm)))
}

func (c *decodeCodec) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := c.take(req); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (c *decodeCodec) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, &decodeCheckedStream{ServerStream: ss, codec: c})
}

// decodeCheckedStream answers INVALID_ARGUMENT for a streamed message
// that did not decode.
type decodeCheckedStream struct {
	grpc.ServerStream
	codec *decodeCodec
}

func (s *decodeCheckedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return s.codec.take(m)
}
