package brokerclient_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/clients/brokerclient"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
)

// broker stands in for a deployed broker in these examples: it answers
// the way the real one does (a session for sandbox, a policy denial with
// its DenialDetail for anything else). The end-to-end tests run the same
// calls against the real broker (credmatrix-dev/devstack).
type broker struct {
	brokerv1.UnimplementedBrokerServiceServer
}

func (broker) IssueSession(_ context.Context, req *brokerv1.IssueSessionRequest) (*brokerv1.IssueSessionResponse, error) {
	t := req.GetTargets()[0]
	if t.GetAccount() != "sandbox" {
		st, _ := status.New(codes.PermissionDenied, "no allow rule matches").WithDetails(&brokerv1.DenialDetail{
			Rule: "default-deny", Reason: fmt.Sprintf("no allow rule matches role %q in account %q for this token", t.GetRole(), t.GetAccount()),
			AuditEventId: "ev-42",
		})
		return nil, st.Err()
	}
	exp := time.Date(2026, 12, 3, 10, 15, 0, 0, time.UTC)
	return &brokerv1.IssueSessionResponse{Sessions: []*brokerv1.Session{{
		Role: t.GetRole(), AccountId: "111111111111", AccountName: "sandbox", Region: "eu-west-1",
		Credentials: &brokerv1.Credentials{AccessKeyId: "ASIAEXAMPLE", SecretAccessKey: "not-shown", SessionToken: "not-shown", Expiration: timestamppb.New(exp)},
	}}}, nil
}

// dialExampleBroker starts the stand-in on an in-memory listener.
func dialExampleBroker() (*grpc.ClientConn, func()) {
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	brokerv1.RegisterBrokerServiceServer(srv, broker{})
	go srv.Serve(lis)
	conn, err := grpc.NewClient("passthrough:///broker",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	return conn, func() { conn.Close(); srv.Stop() }
}

// A CI job swaps its OIDC token for a session, and learns why another
// request is refused. In production the connection comes from Dial with
// the broker's address and CA bundle (TLS; the token is the credential).
func Example() {
	conn, stop := dialExampleBroker()
	defer stop()
	client := brokerclient.New(conn)
	ctx := context.Background()
	token := "eyJ...the job's OIDC token..."

	sessions, err := client.IssueSession(ctx, token, "deploy web", brokerclient.Target{Role: "deploy", Account: "sandbox"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(brokerclient.Describe(sessions[0]))

	_, err = client.IssueSession(ctx, token, "", brokerclient.Target{Role: "deploy", Account: "prod"})
	fmt.Println(brokerclient.IsDenied(err), err)
	// Output:
	// deploy in sandbox (111111111111) eu-west-1 until 2026-12-03T10:15:00Z
	// true denied by rule default-deny: no allow rule matches role "deploy" in account "prod" for this token
}
