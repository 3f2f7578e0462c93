// Package auditclienttest holds test fixtures for audit log consumers: a
// scripted scenario of events with known truth (who held which session,
// which grants were in force, which keys rotated), which the audit
// service's golden log is generated from and which replay and verify
// tests check their answers against.
package auditclienttest
