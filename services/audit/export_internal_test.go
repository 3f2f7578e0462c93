package audit

// SetVerifySegment sets how many events VerifyStore verifies at once and
// returns a function that restores it.
func SetVerifySegment(n uint64) func() {
	old := verifySegment
	verifySegment = n
	return func() { verifySegment = old }
}
