// Package grpcapi serves the audit.v1 AuditService over gRPC. It only
// translates: protobuf requests become calls on audit.Log, domain errors
// become gRPC statuses through the one mapping every service shares
// (grpcserver.ToStatus), and the caller's identity, supplied by the server
// plumbing from the mTLS certificate, is checked against the principals
// allowed to append or read.
package grpcapi

import (
	"context"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/platform/domainerr"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
	"github.com/credmatrix/credmatrix/services/audit"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// Server implements auditv1.AuditServiceServer over an audit.Log.
type Server struct {
	auditv1.UnimplementedAuditServiceServer

	log       *audit.Log
	identity  func(context.Context) (string, bool)
	appenders map[string]bool
	readers   map[string]bool
	logger    hclog.Logger
}

var _ auditv1.AuditServiceServer = (*Server)(nil)

// Option configures a Server.
type Option func(*Server)

// WithIdentity sets how the caller's verified identity (e.g. the SPIFFE
// URI SAN of its mTLS certificate) is read from a request context. Without
// it no caller has an identity, so only empty principal lists let anyone in.
func WithIdentity(identity func(ctx context.Context) (string, bool)) Option {
	return func(s *Server) { s.identity = identity }
}

// WithAppendPrincipals limits Append to these identities (the broker and
// keyguard). An empty list lets anyone append; that is only for the dev
// plaintext mode on loopback.
func WithAppendPrincipals(principals []string) Option {
	return func(s *Server) { s.appenders = set(principals) }
}

// WithReadPrincipals limits Query, Subscribe and the proof RPCs to these
// identities (operators). An empty list lets anyone read.
func WithReadPrincipals(principals []string) Option {
	return func(s *Server) { s.readers = set(principals) }
}

// WithLogger sets where the causes of internal and unavailable errors are
// logged (once, here at the edge; callers get a fixed message). The
// default discards them.
func WithLogger(logger hclog.Logger) Option {
	return func(s *Server) { s.logger = logger }
}

// New returns a Server over log.
func New(log *audit.Log, opts ...Option) *Server {
	s := &Server{
		log:      log,
		identity: func(context.Context) (string, bool) { return "", false },
		logger:   hclog.NewNullLogger(),
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Append implements auditv1.AuditServiceServer. The caller's identity is
// recorded as each event's source_service. With refuse_individually an
// invalid event is answered in its own result (AppendRefusal with its
// status code and message) and the rest of the batch is recorded.
func (s *Server) Append(ctx context.Context, req *auditv1.AppendRequest) (*auditv1.AppendResponse, error) {
	source, err := s.authorize(ctx, s.appenders, "append to")
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	if !req.GetRefuseIndividually() {
		// The request is this handler's: the log may stamp its events.
		results, err := s.log.AppendOwned(ctx, source, req.GetEvents())
		if err != nil {
			return nil, s.fail(ctx, err)
		}
		return &auditv1.AppendResponse{Results: results}, nil
	}
	outcomes, err := s.log.AppendEachOwned(ctx, source, req.GetEvents())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	resp := &auditv1.AppendResponse{Results: make([]*auditv1.AppendResult, len(outcomes))}
	for i, o := range outcomes {
		if o.Err == nil {
			resp.Results[i] = o.Result
			continue
		}
		s.logger.Warn("audit event refused; the rest of its batch is recorded", "source", source, "error", o.Err)
		st := grpcserver.ToStatus(o.Err)
		resp.Results[i] = &auditv1.AppendResult{
			Id:      req.GetEvents()[i].GetId(),
			Refusal: &auditv1.AppendRefusal{Code: int32(st.Code()), Message: st.Message()},
		}
	}
	return resp, nil
}

// Query implements auditv1.AuditServiceServer.
func (s *Server) Query(ctx context.Context, req *auditv1.QueryRequest) (*auditv1.QueryResponse, error) {
	if _, err := s.authorize(ctx, s.readers, "query"); err != nil {
		return nil, s.fail(ctx, err)
	}
	f := audit.Filter{
		Kinds:     req.GetKinds(),
		Subject:   req.GetSubject(),
		AccountID: req.GetAccountId(),
		RoleName:  req.GetRoleName(),
		DataClass: req.GetDataClass(),
		TraceID:   req.GetTraceId(),
		Decision:  req.GetDecision(),
		PageSize:  int(req.GetPageSize()),
		PageToken: req.GetPageToken(),
	}
	if ts := req.GetStartTime(); ts != nil {
		if ts.CheckValid() != nil {
			return nil, s.fail(ctx, domainerr.Errorf(domainerr.Invalid, "start_time: not a valid timestamp"))
		}
		f.Start = ts.AsTime()
	}
	if ts := req.GetEndTime(); ts != nil {
		if ts.CheckValid() != nil {
			return nil, s.fail(ctx, domainerr.Errorf(domainerr.Invalid, "end_time: not a valid timestamp"))
		}
		f.End = ts.AsTime()
	}
	page, err := s.log.Query(ctx, f)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	resp := &auditv1.QueryResponse{Events: page.Events, NextPageToken: page.NextPageToken}
	for _, m := range page.Mismatches {
		resp.ColumnMismatches = append(resp.ColumnMismatches, &auditv1.ColumnMismatch{Sequence: m.Sequence, Columns: m.Columns})
	}
	if len(page.Mismatches) > 0 {
		// Someone wrote to the database behind the service: the
		// operator must hear of it, not only the caller.
		s.logger.Error("audit store rows disagree with the log", "first", page.Mismatches[0].String(), "count", len(page.Mismatches))
	}
	return resp, nil
}

// ListCheckpoints implements auditv1.AuditServiceServer.
func (s *Server) ListCheckpoints(ctx context.Context, req *auditv1.ListCheckpointsRequest) (*auditv1.ListCheckpointsResponse, error) {
	if _, err := s.authorize(ctx, s.readers, "read"); err != nil {
		return nil, s.fail(ctx, err)
	}
	n := int(req.GetPageSize())
	switch {
	case n < 0 || n > audit.MaxPageSize:
		return nil, s.fail(ctx, domainerr.Errorf(domainerr.Invalid, "page_size: must be 0 to %d, got %d", audit.MaxPageSize, n))
	case n == 0:
		n = audit.MaxPageSize
	}
	cps, err := s.log.Checkpoints(ctx, req.GetFromSize(), n)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	resp := &auditv1.ListCheckpointsResponse{Checkpoints: make([]*auditv1.StoredCheckpoint, len(cps))}
	for i, cp := range cps {
		resp.Checkpoints[i] = &auditv1.StoredCheckpoint{TreeSize: cp.Size, SignedNote: cp.Note, Time: timestamppb.New(cp.Time)}
	}
	return resp, nil
}

// Subscribe implements auditv1.AuditServiceServer: stored events from
// from_sequence, then live ones, until the client goes away.
func (s *Server) Subscribe(req *auditv1.SubscribeRequest, stream auditv1.AuditService_SubscribeServer) error {
	ctx := stream.Context()
	if _, err := s.authorize(ctx, s.readers, "subscribe to"); err != nil {
		return s.fail(ctx, err)
	}
	var sendErr error
	err := s.log.Subscribe(ctx, req.GetFromSequence(), req.GetKinds(), func(e *auditv1.Event) error {
		sendErr = stream.Send(&auditv1.SubscribeResponse{Event: e})
		return sendErr
	})
	if sendErr != nil {
		return sendErr // the transport's own status; the stream is gone
	}
	return s.fail(ctx, err)
}

// GetCheckpoint implements auditv1.AuditServiceServer: a signed
// checkpoint covering every durable event.
func (s *Server) GetCheckpoint(ctx context.Context, _ *auditv1.GetCheckpointRequest) (*auditv1.GetCheckpointResponse, error) {
	if _, err := s.authorize(ctx, s.readers, "read"); err != nil {
		return nil, s.fail(ctx, err)
	}
	cp, err := s.log.LatestCheckpoint(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	// Events before first_sequence were archived and pruned: an export
	// starts there, from the tree's compact range at that size.
	start, err := s.log.StartHashes(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &auditv1.GetCheckpointResponse{
		SignedNote:    cp.Note,
		Origin:        cp.Origin,
		TreeSize:      cp.Size,
		RootHash:      cp.Root,
		KeyId:         cp.KeyID,
		Time:          timestamppb.New(cp.Time),
		FirstSequence: s.log.FirstSequence(),
		StartHashes:   start,
	}, nil
}

// GetInclusionProof implements auditv1.AuditServiceServer.
func (s *Server) GetInclusionProof(ctx context.Context, req *auditv1.GetInclusionProofRequest) (*auditv1.GetInclusionProofResponse, error) {
	if _, err := s.authorize(ctx, s.readers, "read"); err != nil {
		return nil, s.fail(ctx, err)
	}
	leaf, path, size, err := s.log.InclusionProof(ctx, req.GetSequence(), req.GetTreeSize())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &auditv1.GetInclusionProofResponse{Sequence: req.GetSequence(), TreeSize: size, LeafHash: leaf, Hashes: path}, nil
}

// GetConsistencyProof implements auditv1.AuditServiceServer.
func (s *Server) GetConsistencyProof(ctx context.Context, req *auditv1.GetConsistencyProofRequest) (*auditv1.GetConsistencyProofResponse, error) {
	if _, err := s.authorize(ctx, s.readers, "read"); err != nil {
		return nil, s.fail(ctx, err)
	}
	proof, second, err := s.log.ConsistencyProof(ctx, req.GetFirstSize(), req.GetSecondSize())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &auditv1.GetConsistencyProofResponse{FirstSize: req.GetFirstSize(), SecondSize: second, Hashes: proof}, nil
}

// authorize returns the caller's identity if allowed is empty or holds it.
// The message does not say which identity was seen or which are allowed.
func (s *Server) authorize(ctx context.Context, allowed map[string]bool, action string) (string, error) {
	id, ok := s.identity(ctx)
	if len(allowed) == 0 || ok && allowed[id] {
		return id, nil
	}
	return "", domainerr.Errorf(domainerr.PermissionDenied, "caller may not %s the audit log", action)
}

// fail logs the cause of err once and returns its status (grpcserver.Fail:
// the one mapping shared by every service).
func (s *Server) fail(ctx context.Context, err error) error {
	return grpcserver.Fail(ctx, s.logger, err).Err()
}

func set(items []string) map[string]bool {
	m := make(map[string]bool, len(items))
	for _, it := range items {
		m[it] = true
	}
	return m
}

// archiveChunk is the size of one ArchiveResponse chunk.
const archiveChunk = 1 << 20

// chunkSender sends what is written to it as ArchiveResponse chunks.
type chunkSender struct {
	stream auditv1.AuditService_ArchiveServer
	buf    []byte
}

func (c *chunkSender) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), archiveChunk-len(c.buf))
		c.buf = append(c.buf, p[:k]...)
		p = p[k:]
		if len(c.buf) == archiveChunk {
			if err := c.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (c *chunkSender) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	err := c.stream.Send(&auditv1.ArchiveResponse{Chunk: c.buf})
	c.buf = make([]byte, 0, archiveChunk)
	return err
}

// Archive implements auditv1.AuditServiceServer: operators only, like
// Query.
func (s *Server) Archive(req *auditv1.ArchiveRequest, stream auditv1.AuditService_ArchiveServer) error {
	ctx := stream.Context()
	id, err := s.authorize(ctx, s.readers, "archive")
	if err != nil {
		return s.fail(ctx, err)
	}
	if id == "" {
		id = "operator"
	}
	cs := &chunkSender{stream: stream, buf: make([]byte, 0, archiveChunk)}
	info, seq, err := s.log.Archive(ctx, id, req.GetEndSize(), cs)
	if err == nil {
		err = cs.flush()
	}
	if err != nil {
		if ctx.Err() != nil {
			return grpcserver.ToStatus(ctx.Err()).Err()
		}
		return s.fail(ctx, err)
	}
	return stream.Send(&auditv1.ArchiveResponse{Summary: &auditv1.ArchiveSummary{
		FirstSequence: info.First, EndSize: info.End, Sha256: info.SHA256, AuditSequence: seq,
	}})
}

// Prune implements auditv1.AuditServiceServer: operators only, like
// Archive. The range and digest must be those of an archive the log
// recorded (audit.Log.Prune).
func (s *Server) Prune(ctx context.Context, req *auditv1.PruneRequest) (*auditv1.PruneResponse, error) {
	id, err := s.authorize(ctx, s.readers, "prune")
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	if id == "" {
		id = "operator"
	}
	res, err := s.log.Prune(ctx, id, req.GetFirstSequence(), req.GetEndSize(), req.GetSha256())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &auditv1.PruneResponse{FirstSequence: res.First, AuditSequence: res.Sequence}, nil
}
