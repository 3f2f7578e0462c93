package keyguard

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// StaticGrantOperation names the events that record the static grants of
// the key-ring file (KeyDetail.operation).
const StaticGrantOperation = "static-grant"

// staticGrantCaller is the actor of those events: the configuration, not a
// caller.
const staticGrantCaller = "key-ring-file"

// RecordStaticGrants records the static grants in force — those of the
// key-ring file, which no API call creates — in the audit log, so a replay
// of the log knows them: one KIND_GRANT_CREATE event per grant, all with
// the same KeyDetail.static_load and item_count, appended in one batch
// when the auditor can (a load with no static grant is one
// KIND_GRANT_REVOKE event without a grant id). The server calls it at
// start; recording a load again is harmless (a replay keeps identical
// grants as they were).
func (s *Service) RecordStaticGrants(ctx context.Context) error {
	now := s.clock()
	id, err := newUUID(s.rand)
	if err != nil {
		return errAuditUnavailable(err)
	}
	sum := sha256.New()
	for _, g := range s.static {
		fmt.Fprintf(sum, "%q\n", g.ID)
	}
	load := "load-" + now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(sum.Sum(nil))[:12] + "-" + id[:8]
	n := len(s.static)
	reason := "static grant of the key-ring file (" + strconv.Itoa(n) + " in force)"
	if n == 0 {
		o := &op{caller: staticGrantCaller, kind: auditv1.Kind_KIND_GRANT_REVOKE, detail: func(kd *auditv1.KeyDetail) {
			kd.Operation, kd.StaticLoad, kd.ItemCount = StaticGrantOperation, load, 0
		}}
		_, err := s.record(ctx, o, auditv1.Decision_DECISION_ALLOW, "the key-ring file has no static grant")
		return err
	}
	items := make([]pending, n)
	for i := range s.static {
		g := cloneGrant(s.static[i])
		ring := Ring{DataClass: g.DataClass}
		if len(g.Regions) == 1 {
			ring.Region = g.Regions[0]
		}
		detail := grantDetail(&g)
		o := &op{caller: staticGrantCaller, kind: auditv1.Kind_KIND_GRANT_CREATE, ring: ring, grantID: g.ID, context: g.RequiredContext,
			detail: func(kd *auditv1.KeyDetail) {
				detail(kd)
				kd.Operation, kd.StaticLoad, kd.ItemCount = StaticGrantOperation, load, uint32(n)
			}}
		items[i] = pending{ev: s.event(ctx, o, auditv1.Decision_DECISION_ALLOW, reason)}
	}
	return s.appendAll(ctx, items)
}
