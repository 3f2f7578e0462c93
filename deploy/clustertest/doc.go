// Package clustertest is the multi-replica harness (`make cluster-test`):
// 3 brokers, 2 keyguards and 2 audit replicas as real processes on one
// throwaway PostgreSQL cluster, keyguard's KEKs in local-kms, STS and IAM
// in process. Under a steady load it measures how fast freezes,
// revocations, grant revocations and policy reloads reach every replica,
// checks that no replica decides on stale state after such a call returned,
// counts the requests that fail while each kind of process is killed with
// SIGKILL and restarted, times the IAM deny on 100 roles, and reports the
// CPU cost of an issuance and an Encrypt with one and two replicas on
// PostgreSQL against SQLite. It prints one table.
//
// Its tests build only with the "cluster" tag: they take minutes, and CI
// runs them once, from `make cluster-test`.
package clustertest
