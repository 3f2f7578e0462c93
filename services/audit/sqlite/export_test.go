package sqlite

// SetWALTruncateBytes sets the WAL bound for a test and returns the
// function that restores it.
func SetWALTruncateBytes(n int64) (restore func()) {
	old := walTruncateBytes
	walTruncateBytes = n
	return func() { walTruncateBytes = old }
}

// SetTileWrittenHook sets a function run after each tile row is written
// inside a transaction (before the commit).
func SetTileWrittenHook(f func()) { testHookTileWritten = f }
