package keyguardclient_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/credmatrix/credmatrix/clients/devstack"
	"github.com/credmatrix/credmatrix/clients/keyguardclient"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
)

// An internal app encrypts a record under the confidential/eu-west-1 ring,
// bound to its table, and decrypts it again. The local stack stands in for
// a deployed keyguard.
func Example() {
	dir, _ := os.MkdirTemp("", "credmatrix-example")
	defer os.RemoveAll(dir)
	stack, err := devstack.Start(context.Background(), devstack.Config{StateDir: dir, Ports: devstack.EphemeralPorts()})
	if err != nil {
		log.Fatal(err)
	}
	defer stack.Close()
	_, _, keyguardAddr := stack.Addrs()
	conn, err := grpcclient.Dial(stack.PKI().Client("cli", keyguardAddr)) // the app's mTLS identity
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	client := keyguardclient.New(conn)

	ctx := context.Background()
	encCtx := map[string]string{"table": "customers"}
	ct, key, err := client.Encrypt(ctx, "confidential", "eu-west-1", []byte("iban=DE89..."), encCtx)
	if err != nil {
		log.Fatal(err)
	}
	pt, _, err := client.Decrypt(ctx, ct, encCtx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s/%s v%d: %s\n", key.GetDataClass(), key.GetRegion(), key.GetVersion(), pt)
	// Output: confidential/eu-west-1 v1: iban=DE89...
}
