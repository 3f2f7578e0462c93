// Package auditevent is what every producer of audit events (broker,
// keyguard) and the audit service share about the content of an event:
// the keyed HMAC that names a secret (Hasher), the one detector of
// secret-shaped text (ContainsSecret), the one normaliser that makes any
// caller-supplied text recordable (Normalise), and the check the audit
// service enforces (Check). Because producers and the service call the
// same functions, a value a producer lets through is one the service
// accepts: no caller input can make an event unrecordable.
package auditevent
