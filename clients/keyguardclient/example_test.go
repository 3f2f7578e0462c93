package keyguardclient_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/credmatrix/credmatrix/clients/keyguardclient"
	"github.com/credmatrix/credmatrix/clients/keyguardclient/envelope"
	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"
)

// keyguard stands in for a deployed keyguard in these examples: one
// in-memory key-encryption key wraps data keys in real envelopes, as the
// service's local backend does (no grants, no audit). The end-to-end tests
// run the same calls against the real service (credmatrix-dev/devstack).
type keyguard struct {
	keyguardv1.UnimplementedKeyguardServiceServer
	kek []byte
}

// kekLabel marks an envelope sealed directly under the KEK (a wrapped data key).
var kekLabel = []byte("example-kek")

func (k *keyguard) GenerateDataKey(_ context.Context, req *keyguardv1.GenerateDataKeyRequest) (*keyguardv1.GenerateDataKeyResponse, error) {
	dk, wrapped, err := k.newDataKey(req.GetDataClass(), req.GetRegion(), req.GetEncryptionContext())
	if err != nil {
		return nil, err
	}
	return &keyguardv1.GenerateDataKeyResponse{PlaintextDataKey: dk, WrappedDataKey: wrapped, Key: keyRef(req.GetDataClass(), req.GetRegion())}, nil
}

func (k *keyguard) Encrypt(_ context.Context, req *keyguardv1.EncryptRequest) (*keyguardv1.EncryptResponse, error) {
	dk, wrapped, err := k.newDataKey(req.GetDataClass(), req.GetRegion(), req.GetEncryptionContext())
	if err != nil {
		return nil, err
	}
	ct, err := envelope.Seal(dk, envelope.Header{DataClass: req.GetDataClass(), Region: req.GetRegion(), KeyVersion: 1, WrappedKey: wrapped},
		req.GetEncryptionContext(), req.GetPlaintext(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return &keyguardv1.EncryptResponse{Ciphertext: ct, Key: keyRef(req.GetDataClass(), req.GetRegion())}, nil
}

func (k *keyguard) Decrypt(_ context.Context, req *keyguardv1.DecryptRequest) (*keyguardv1.DecryptResponse, error) {
	h, _, err := envelope.ParseHeader(req.GetCiphertext())
	if err != nil {
		return nil, err
	}
	key := k.kek
	if !bytes.Equal(h.WrappedKey, kekLabel) {
		if key, _, err = envelope.Open(k.kek, h.WrappedKey, req.GetEncryptionContext()); err != nil {
			return nil, err
		}
	}
	pt, _, err := envelope.Open(key, req.GetCiphertext(), req.GetEncryptionContext())
	if err != nil {
		return nil, err
	}
	return &keyguardv1.DecryptResponse{Plaintext: pt, Key: keyRef(h.DataClass, h.Region)}, nil
}

func (k *keyguard) newDataKey(class, region string, encCtx map[string]string) (dk, wrapped []byte, err error) {
	dk = make([]byte, envelope.DataKeySize)
	if _, err := rand.Read(dk); err != nil {
		return nil, nil, err
	}
	wrapped, err = envelope.Seal(k.kek, envelope.Header{DataClass: class, Region: region, KeyVersion: 1, WrappedKey: kekLabel}, encCtx, dk, rand.Reader)
	return dk, wrapped, err
}

func keyRef(class, region string) *keyguardv1.KeyRef {
	return &keyguardv1.KeyRef{DataClass: class, Region: region, Version: 1}
}

// dialExampleKeyguard starts the stand-in on an in-memory listener. In
// production the connection comes from platform/grpcclient.Dial with
// keyguard's address and CA bundle, and the client sends the app's
// token with WithBearerToken (or uses an mTLS identity).
func dialExampleKeyguard() (*grpc.ClientConn, func()) {
	kek := make([]byte, envelope.DataKeySize)
	rand.Read(kek)
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	keyguardv1.RegisterKeyguardServiceServer(srv, &keyguard{kek: kek})
	go srv.Serve(lis)
	conn, err := grpc.NewClient("passthrough:///keyguard",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	return conn, func() { conn.Close(); srv.Stop() }
}

// An internal app encrypts a record under the confidential/eu-west-1 ring,
// bound to its table, and decrypts it again.
func Example() {
	conn, stop := dialExampleKeyguard()
	defer stop()
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
	_, _, err = client.Decrypt(ctx, ct, map[string]string{"table": "orders"})
	fmt.Printf("%s/%s v%d: %s\n", key.GetDataClass(), key.GetRegion(), key.GetVersion(), pt)
	fmt.Println("wrong context refused:", err != nil)
	// Output:
	// confidential/eu-west-1 v1: iban=DE89...
	// wrong context refused: true
}

// An app seals records locally with a cached data key: one GenerateDataKey
// call serves many records, and the records never cross the network.
// DecryptLocal unwraps the data key through keyguard once, then opens
// locally too.
func ExampleClient_EncryptLocal() {
	conn, stop := dialExampleKeyguard()
	defer stop()
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
func ExampleClient_NewEncryptWriter() {
	conn, stop := dialExampleKeyguard()
	defer stop()
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
