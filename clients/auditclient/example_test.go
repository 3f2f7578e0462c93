package auditclient_test

import (
	"fmt"
	"log"
	"os"
	"time"

	"github.com/credmatrix/credmatrix/clients/auditclient/bundle"
	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/clients/auditclient/replay"
	"github.com/credmatrix/credmatrix/clients/auditclient/verify"
)

// An investigator verifies an exported log offline with the log's public
// key and asks who held a session at 09:38. The bundle would come from
// `credmatrix audit export` or Client.Export; this one is the golden log
// the audit service's tests generate.
func Example() {
	f, err := os.Open("verify/testdata/golden/log.bundle")
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	b, err := bundle.Read(f)
	if err != nil {
		log.Fatal(err)
	}
	pub, err := os.ReadFile("verify/testdata/golden/log.pub")
	if err != nil {
		log.Fatal(err)
	}
	key, err := checkpoint.NewVerifier(string(pub))
	if err != nil {
		log.Fatal(err)
	}
	r := verify.Bundle(b, verify.Options{Key: key, KeepEvents: true})
	fmt.Println("verified:", r.OK(), "events:", r.Events, "signed:", r.VerifiedSize)

	rp := replay.New()
	for _, e := range r.DecodedEvents {
		rp.Apply(e)
	}
	at := time.Date(2026, 11, 1, 9, 38, 0, 0, time.UTC)
	for _, s := range rp.SessionsAt(at, replay.SessionFilter{}) {
		fmt.Println(s.SessionID, s.RoleName, "in", s.AccountName, "held by", s.Subject)
	}
	// Output:
	// verified: true events: 13 signed: 13
	// s1 deploy in sandbox held by repo:acme/app:ref:refs/heads/main
	// s3 deploy in sandbox held by repo:acme/app:ref:refs/heads/main
}
