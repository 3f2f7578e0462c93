// Package e2e holds the end-to-end tests of credmatrix: the credmatrix CLI
// and the service binaries, built from this tree and run as separate
// processes against the local stack, as a CI runner, an internal app or an
// operator would run them.
package e2e
