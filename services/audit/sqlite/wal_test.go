package sqlite_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/services/audit/sqlite"
	"github.com/credmatrix/credmatrix/services/audit/storetest"
)

// TestWALStaysBounded: with a reader always active, as a Subscribe tail
// and queries are in production, the WAL file does not grow without end
// (it grew by about 12 KB per event before the checkpointer truncated it).
func TestWALStaysBounded(t *testing.T) {
	const bound = 1 << 20
	defer sqlite.SetWALTruncateBytes(bound)()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "audit.db")
	st, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // a reader that is always in a read transaction or starting one
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := st.ReadRows(ctx, 0, 50); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var written, last, maxWAL int64
	for i := uint64(0); written < 8*bound; i++ {
		if err := storetest.Append(ctx, st, storetest.Events(i, 1, "wal")); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path + "-wal")
		if err != nil {
			t.Fatal(err)
		}
		// Frames appended since the last look (the file only grows
		// between truncations).
		written += max(0, fi.Size()-last)
		last = fi.Size()
		maxWAL = max(maxWAL, fi.Size())
	}
	// With the reader still active, the checkpointer brings the WAL back
	// under the bound (a PASSIVE checkpoint alone never shrinks it).
	deadline := time.Now().Add(time.Minute)
	for {
		fi, err := os.Stat(path + "-wal")
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() <= bound {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the WAL is still %d bytes a minute after %d bytes of commits (at most %d seen): not bounded", fi.Size(), written, maxWAL)
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
}
