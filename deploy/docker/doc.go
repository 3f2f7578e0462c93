// Package docker holds the credmatrix container images' Dockerfile and a
// test that keeps it in step with the workspace and with `make images-bin`
// (no Docker engine runs in CI, so the binaries are built there instead).
// It has no Go API.
package docker
