package auditappend

// AppendHealthService is the gRPC health service name an audit replica
// reports SERVING while it can append (with PostgreSQL: while it is the
// sequencer; a SQLite log always). Producers dial the audit replicas with
// grpcclient.Config.HealthService set to it, so that their appends go to
// the sequencer only and follow it when another replica takes over.
const AppendHealthService = "credmatrix.audit.v1.AuditService/Append"
