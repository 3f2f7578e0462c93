package keyguard_test

import (
	"testing"

	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/credmatrix/credmatrix/services/keyguard/storetest"
)

func TestMemoryStoreConformance(t *testing.T) {
	storetest.Run(t, func(*testing.T) keyguard.Store { return keyguard.NewMemoryStore() })
}

func TestMemoryStoreReplicas(t *testing.T) {
	storetest.RunReplicas(t, func(*testing.T) (keyguard.Store, keyguard.Store) {
		s := keyguard.NewMemoryStore()
		return s, s
	})
}
