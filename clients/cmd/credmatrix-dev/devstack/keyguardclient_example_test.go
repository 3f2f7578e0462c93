package devstack_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/devstack"
	"github.com/credmatrix/credmatrix/clients/keyguardclient"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
)

// An internal app encrypts a record under the confidential/eu-west-1 ring,
// bound to its table, and decrypts it again. The local stack stands in for
// a deployed keyguard.
func Example_keyguardClient() {
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

// An app seals records locally with a cached data key: one GenerateDataKey
// call serves many records, and the records never cross the network.
// DecryptLocal unwraps the data key through keyguard once, then opens
// locally too.
func Example_keyguardClientEncryptLocal() {
	dir, _ := os.MkdirTemp("", "credmatrix-example")
	defer os.RemoveAll(dir)
	stack, err := devstack.Start(context.Background(), devstack.Config{StateDir: dir, Ports: devstack.EphemeralPorts()})
	if err != nil {
		log.Fatal(err)
	}
	defer stack.Close()
	_, _, keyguardAddr := stack.Addrs()
	conn, err := grpcclient.Dial(stack.PKI().Client("cli", keyguardAddr))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	client := keyguardclient.New(conn, keyguardclient.WithCacheLimits(keyguardclient.CacheLimits{MaxAge: time.Minute, MaxMessages: 1000}))

	ctx := context.Background()
	encCtx := map[string]string{"table": "events"}
	var sealed [][]byte
	for _, rec := range []string{"login alice", "login bob", "logout alice"} {
		ct, err := client.EncryptLocal(ctx, "internal", "us-east-1", []byte(rec), encCtx)
		if err != nil {
			log.Fatal(err)
		}
		sealed = append(sealed, ct)
	}
	for _, ct := range sealed {
		pt, err := client.DecryptLocal(ctx, ct, encCtx)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(string(pt))
	}
	// Output:
	// login alice
	// login bob
	// logout alice
}

// A backup job streams a large file through chunked encryption; a stream
// cut short (here: its last 10 bytes lost) is detected when read back.
func Example_keyguardClientStream() {
	dir, _ := os.MkdirTemp("", "credmatrix-example")
	defer os.RemoveAll(dir)
	stack, err := devstack.Start(context.Background(), devstack.Config{StateDir: dir, Ports: devstack.EphemeralPorts()})
	if err != nil {
		log.Fatal(err)
	}
	defer stack.Close()
	_, _, keyguardAddr := stack.Addrs()
	conn, err := grpcclient.Dial(stack.PKI().Client("cli", keyguardAddr))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	client := keyguardclient.New(conn)

	ctx := context.Background()
	encCtx := map[string]string{"backup": "db-2026-03-01"}
	payload := bytes.Repeat([]byte("row;"), 1<<20) // 4 MiB
	var stored bytes.Buffer
	w, err := client.NewEncryptWriter(ctx, &stored, "confidential", "eu-west-1", encCtx)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := io.Copy(w, bytes.NewReader(payload)); err != nil {
		log.Fatal(err)
	}
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}

	r, err := client.NewDecryptReader(ctx, bytes.NewReader(stored.Bytes()), encCtx)
	if err != nil {
		log.Fatal(err)
	}
	var restored bytes.Buffer
	_, err = io.Copy(&restored, r)
	fmt.Println(err, bytes.Equal(restored.Bytes(), payload))

	cut := stored.Bytes()[:stored.Len()-10]
	r, err = client.NewDecryptReader(ctx, bytes.NewReader(cut), encCtx)
	if err != nil {
		log.Fatal(err)
	}
	_, err = io.Copy(io.Discard, r)
	fmt.Println(errors.Is(err, keyguardclient.ErrStreamAuthentication))
	// Output:
	// <nil> true
	// true
}
