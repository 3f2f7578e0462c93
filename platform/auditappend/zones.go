package auditappend

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/grpc"

	"github.com/credmatrix/credmatrix/platform/auditevent"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// GlobalLog is the name operators and the CLI give the log at
// audit.target, which keeps the events of no single zone; no zone may be
// called so.
const GlobalLog = "global"

// ErrNoZoneLog means an event's residency zone has no audit log: the event
// is recorded nowhere (never in another zone's log or the global one), and
// its request fails closed.
var ErrNoZoneLog = errors.New("no audit log for the event's residency zone")

// Zones sends each event to the audit log of its residency zone
// (Event.residency_zone), one Appender per zone, and events of no zone to
// the global log. A zone whose log is down fails the requests of that
// zone only. It is safe for concurrent use.
type Zones struct {
	global *Appender
	zones  map[string]*Appender
}

// NewZones routes events of no zone to global and those of each zone to
// zones[zone]. With zones empty, every event goes to global (a single log
// keeps every zone).
func NewZones(global *Appender, zones map[string]*Appender) *Zones {
	return &Zones{global: global, zones: zones}
}

// appenderFor returns the appender of ev's zone.
func (z *Zones) appenderFor(ev *auditv1.Event) (*Appender, error) {
	zone := ev.GetResidencyZone()
	if zone == "" || len(z.zones) == 0 {
		return z.global, nil
	}
	a, ok := z.zones[zone]
	if !ok {
		return nil, fmt.Errorf("audit unavailable: event %s of residency zone %q: %w", ev.GetId(), zone, ErrNoZoneLog)
	}
	return a, nil
}

// Append records ev in its zone's log.
func (z *Zones) Append(ctx context.Context, ev *auditv1.Event) (*auditv1.AppendResult, error) {
	a, err := z.appenderFor(ev)
	if err != nil {
		return nil, err
	}
	return a.Append(ctx, ev)
}

// AppendBatch records each event in its zone's log (the zones' appends run
// concurrently) and returns the positions in order, each in its own log.
// If any zone fails, the batch fails: the events of the other zones may be
// recorded, as a failed Append's may.
func (z *Zones) AppendBatch(ctx context.Context, evs []*auditv1.Event) ([]*auditv1.AppendResult, error) {
	type part struct {
		idx []int
		evs []*auditv1.Event
	}
	parts := map[*Appender]*part{}
	for i, ev := range evs {
		a, err := z.appenderFor(ev)
		if err != nil {
			return nil, err
		}
		p := parts[a]
		if p == nil {
			p = &part{}
			parts[a] = p
		}
		p.idx, p.evs = append(p.idx, i), append(p.evs, ev)
	}
	out := make([]*auditv1.AppendResult, len(evs))
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for a, p := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := a.AppendBatch(ctx, p.evs)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if first == nil {
					first = err
				}
				return
			}
			for j, r := range res {
				out[p.idx[j]] = r
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return nil, first
	}
	return out, nil
}

// Close closes every appender (see Appender.Close).
func (z *Zones) Close(ctx context.Context) error {
	errs := []error{z.global.Close(ctx)}
	for _, a := range z.zones {
		errs = append(errs, a.Close(ctx))
	}
	return errors.Join(errs...)
}

// ParseZoneTargets reads a producer's audit_zones setting: entries of the
// form "zone=target" (a target as grpcclient.Config.Target takes it), one
// per zone.
func ParseZoneTargets(entries []string) (map[string]string, error) {
	out := map[string]string{}
	for i, e := range entries {
		zone, target, ok := strings.Cut(e, "=")
		switch {
		case !ok || target == "":
			return nil, fmt.Errorf("audit_zones[%d]: %q: want zone=target", i, e)
		case !auditevent.ValidZone(zone):
			return nil, fmt.Errorf("audit_zones[%d]: %q is not a zone name (1 to 32 of [a-z0-9-], starting with a letter)", i, zone)
		case zone == GlobalLog:
			return nil, fmt.Errorf("audit_zones[%d]: %q names the log of events of no zone (audit.target), not a zone", i, zone)
		}
		if _, dup := out[zone]; dup {
			return nil, fmt.Errorf("audit_zones[%d]: zone %q listed twice", i, zone)
		}
		out[zone] = target
	}
	return out, nil
}

// DialZones connects to the global audit log (global) and to each zone's
// log (global's TLS settings and health service, the zone's target, the
// certificate checked against the zone target's host), and returns the
// router, the global log's Appender and a function that closes the
// connections (after Zones.Close).
func DialZones(global grpcclient.Config, zoneTargets map[string]string, opts ...Option) (*Zones, *Appender, func() error, error) {
	var conns []*grpc.ClientConn
	closeAll := func() error {
		var errs []error
		for _, c := range conns {
			errs = append(errs, c.Close())
		}
		return errors.Join(errs...)
	}
	conn, err := grpcclient.Dial(global)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("audit client: %w", err)
	}
	conns = append(conns, conn)
	g := New(conn, opts...)
	zones := map[string]*Appender{}
	for zone, target := range zoneTargets {
		c := global
		c.Target, c.ServerName = target, ""
		conn, err := grpcclient.Dial(c)
		if err != nil {
			closeAll()
			return nil, nil, nil, fmt.Errorf("audit client of zone %s: %w", zone, err)
		}
		conns = append(conns, conn)
		zones[zone] = New(conn, opts...)
	}
	return NewZones(g, zones), g, closeAll, nil
}
