package keyguardclient

import (
	"testing"

	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"
)

func testKey(t testing.TB) *DataKey {
	t.Helper()
	return &DataKey{plaintext: make([]byte, 32), Wrapped: []byte("wrapped"), Key: &keyguardv1.KeyRef{DataClass: "confidential", Region: "eu-west-1", Version: 1}}
}

func TestDataKeyNeverPrinted(t *testing.T) {
	dk := testKey(t)
	if got, want := dk.String(), "DataKey{confidential/eu-west-1 v1, [redacted]}"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if got := dk.LogValue().String(); got != dk.String() {
		t.Errorf("LogValue() = %q", got)
	}
}
