package main

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/proto"

	"github.com/credmatrix/credmatrix/clients/auditclient"
	"github.com/credmatrix/credmatrix/clients/auditclient/replay"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// globalLog names the audit log of the events that belong to no single
// residency zone (and, with no zone configured, of every event).
const globalLog = "global"

// auditLog is one audit log the CLI reads: the global one at --audit-addr,
// or a residency zone's (its own store, checkpoint key and origin).
type auditLog struct {
	name          string // globalLog or a zone
	addr          string
	publicKeyFile string
}

// zoneFlags are the audit commands' settings for reading the logs of
// several residency zones.
type zoneFlags struct {
	addrs []string // zone=addr
	keys  []string // zone=public key file
	only  []string // logs to read (zones, or "global"); empty: all
}

// envList splits a comma-separated environment variable.
func envList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func (a *app) zoneFlagSet(f *pflag.FlagSet, z *zoneFlags) {
	f.StringSliceVar(&z.addrs, "audit-zone", envList(a.getenv("CREDMATRIX_AUDIT_ZONES")), "zone=address of each residency zone's audit log, beside the global log at --audit-addr; audit commands then read every log and name the log of each answer (env CREDMATRIX_AUDIT_ZONES, comma-separated)")
	f.StringSliceVar(&z.keys, "zone-public-key-file", envList(a.getenv("CREDMATRIX_AUDIT_ZONE_PUBLIC_KEY_FILES")), "zone=file: the checkpoint verifier key of each zone's log, for verify and replay (env CREDMATRIX_AUDIT_ZONE_PUBLIC_KEY_FILES, comma-separated)")
	f.StringSliceVar(&z.only, "zone", nil, "read only these logs: zone names, or global (default: every log)")
}

// parseZoneList reads zone=value entries of flag into a map.
func parseZoneList(flag string, entries []string) (map[string]string, error) {
	out := map[string]string{}
	for _, e := range entries {
		zone, v, ok := strings.Cut(e, "=")
		switch {
		case !ok || zone == "" || v == "":
			return nil, usagef("--%s %q: want zone=value", flag, e)
		case zone == globalLog:
			return nil, usagef("--%s %q: %q names the global log (--audit-addr, --public-key-file), not a zone", flag, e, globalLog)
		}
		if _, dup := out[zone]; dup {
			return nil, usagef("--%s: zone %q given twice", flag, zone)
		}
		out[zone] = v
	}
	return out, nil
}

// logs returns the audit logs to read, global first then zones by name;
// zoned reports whether zones are configured (answers then name their
// log). globalKey is the global log's verifier key file.
func (a *app) logs(z *zoneFlags, globalKey string) (logs []auditLog, zoned bool, err error) {
	addrs, err := parseZoneList("audit-zone", z.addrs)
	if err != nil {
		return nil, false, err
	}
	keys, err := parseZoneList("zone-public-key-file", z.keys)
	if err != nil {
		return nil, false, err
	}
	for zone := range keys {
		if _, ok := addrs[zone]; !ok {
			return nil, false, usagef("--zone-public-key-file: zone %q has no --audit-zone address", zone)
		}
	}
	all := []auditLog{{name: globalLog, addr: a.auditAddr, publicKeyFile: globalKey}}
	zones := make([]string, 0, len(addrs))
	for zone := range addrs {
		zones = append(zones, zone)
	}
	sort.Strings(zones)
	for _, zone := range zones {
		all = append(all, auditLog{name: zone, addr: addrs[zone], publicKeyFile: keys[zone]})
	}
	if len(z.only) == 0 {
		return all, len(zones) > 0, nil
	}
	for _, name := range z.only {
		i := slices.IndexFunc(all, func(l auditLog) bool { return l.name == name })
		if i < 0 {
			return nil, false, usagef("--zone %q: no such audit log (have %s; zones come from --audit-zone)", name, strings.Join(logNames(all), ", "))
		}
		if !slices.ContainsFunc(logs, func(l auditLog) bool { return l.name == name }) {
			logs = append(logs, all[i])
		}
	}
	return logs, len(zones) > 0, nil
}

// oneLog returns the single log a command that reads one log (tail,
// export) reads: the global one unless zones are configured, where --zone
// must pick it.
func (a *app) oneLog(z *zoneFlags, globalKey string) (auditLog, bool, error) {
	logs, zoned, err := a.logs(z, globalKey)
	if err != nil {
		return auditLog{}, false, err
	}
	if len(logs) != 1 {
		return auditLog{}, false, usagef("this command reads one audit log: pick it with --zone (one of %s)", strings.Join(logNames(logs), ", "))
	}
	return logs[0], zoned, nil
}

func logNames(logs []auditLog) []string {
	var out []string
	for _, l := range logs {
		out = append(out, l.name)
	}
	return out
}

// zonedEvent is an event and the log it came from.
type zonedEvent struct {
	log string
	ev  *auditv1.Event
}

// zonedLeaf is a verified event's leaf bytes, read for replay, and the
// log it came from.
type zonedLeaf struct {
	log  string
	leaf replay.Leaf
}

// merge interleaves the events of several logs, each given in its
// sequence order, by time: the next event is always the earliest of the
// logs' next ones (ties: the log listed first), so each log keeps its own
// order and events of different logs, which have only time in common,
// meet in time order.
func merge(perLog [][]zonedEvent) []zonedEvent {
	return mergeBy(perLog, func(z zonedEvent) time.Time { return z.ev.GetTime().AsTime() })
}

// mergeBy is merge for events whose time is at(event).
func mergeBy[T any](perLog [][]T, at func(T) time.Time) []T {
	var out []T
	next := make([]int, len(perLog))
	for {
		best := -1
		for i, evs := range perLog {
			if next[i] == len(evs) {
				continue
			}
			if best < 0 || at(evs[next[i]]).Before(at(perLog[best][next[best]])) {
				best = i
			}
		}
		if best < 0 {
			return out
		}
		out = append(out, perLog[best][next[best]])
		next[best]++
	}
}

// replayAll replays the logs' verified events together, merged by time.
func replayAll(perLog [][]zonedLeaf) (*replay.Replayer, error) {
	rp := replay.New()
	for _, z := range mergeBy(perLog, func(z zonedLeaf) time.Time { return z.leaf.Time }) {
		if err := rp.ApplyLeafIn(z.log, z.leaf); err != nil {
			return nil, fmt.Errorf("%w, refusing to replay it: %v", errNotVerified, err)
		}
	}
	return rp, nil
}

// logFailed says on standard error which log failed, so that the answers
// of the other logs, printed anyway, are not mistaken for all of them.
func (a *app) logFailed(l auditLog, err error) {
	_, msg := classify(err)
	fmt.Fprintf(a.err, "credmatrix: audit log %s (%s): %s\n", l.name, l.addr, msg)
}

// keptFileOf is where the checkpoint kept for log l lives: file itself for
// the global log, file.<zone> for a zone's.
func keptFileOf(file string, l auditLog) string {
	if file == "" || l.name == globalLog {
		return file
	}
	return file + "." + l.name
}

// checkKeyFile makes sure a zone's verifier key is configured.
func checkKeyFile(l auditLog) error {
	if l.publicKeyFile != "" {
		return nil
	}
	if l.name == globalLog {
		return usagef("--public-key-file: required (the global log's checkpoint verifier key, e.g. audit-checkpoint.key.pub)")
	}
	return usagef("--zone-public-key-file: no verifier key for zone %s (give %s=FILE)", l.name, l.name)
}

// setZoned makes the printer name each event's log: a first LOG column,
// or an "audit_log" field in JSON.
func (p *eventPrinter) setZoned() {
	p.zoned = true
	p.table.header = append([]string{"LOG"}, eventHeader...)
}

// queryOne answers a query from one log (no zones configured).
func (a *app) queryOne(ctx context.Context, l auditLog, req *auditv1.QueryRequest, account string, p *eventPrinter) error {
	conn, err := a.dial(l.addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	client := auditclient.New(conn)
	note := ""
	if account != "" {
		id, found, err := resolveAccount(ctx, client, account)
		if err != nil {
			return err
		}
		if !found {
			p.summary(fmt.Sprintf("no session event in the log names account %q; try its 12-digit id", account))
			return nil
		}
		req.AccountId = id
		if id != account {
			note = fmt.Sprintf("account %s is %s", account, id)
		}
	}
	if err := client.Query(ctx, req, p.add); err != nil {
		return err
	}
	if err := p.flush(); err != nil {
		return err
	}
	p.summary(note)
	return nil
}

// queryZones answers a query from every log, merged by time, each event
// naming its log. A log that fails is named on standard error and the
// others' answers are printed anyway; the command then fails.
func (a *app) queryZones(ctx context.Context, logs []auditLog, req *auditv1.QueryRequest, account string, p *eventPrinter) error {
	p.setZoned()
	var (
		firstErr error
		perLog   [][]zonedEvent
		counts   []string
		ids      = map[string]bool{}
	)
	for _, l := range logs {
		evs, id, err := a.queryLog(ctx, l, req, account)
		if err != nil {
			a.logFailed(l, err)
			if firstErr == nil {
				firstErr = err
			}
			counts = append(counts, l.name+" unavailable")
			continue
		}
		if id != "" {
			ids[id] = true
		}
		perLog = append(perLog, evs)
		counts = append(counts, fmt.Sprintf("%s %d", l.name, len(evs)))
	}
	for _, z := range merge(perLog) {
		if err := p.addFrom(z.log, z.ev); err != nil {
			return err
		}
	}
	if err := p.flush(); err != nil {
		return err
	}
	note := strings.Join(counts, ", ")
	switch {
	case account == "":
	case len(ids) == 0:
		note += fmt.Sprintf("; no session event in any log names account %q; try its 12-digit id", account)
	case !ids[account]:
		var list []string
		for id := range ids {
			list = append(list, id)
		}
		sort.Strings(list)
		note += fmt.Sprintf("; account %s is %s", account, strings.Join(list, " "))
	}
	p.summary(note)
	return firstErr
}

// queryLog runs one log's part of a zoned query; id is the account id
// the name resolved to in that log ("" when the log names no such
// account, and then there is nothing to ask it).
func (a *app) queryLog(ctx context.Context, l auditLog, req *auditv1.QueryRequest, account string) (evs []zonedEvent, id string, err error) {
	conn, err := a.dial(l.addr)
	if err != nil {
		return nil, "", err
	}
	defer conn.Close()
	client := auditclient.New(conn)
	r := proto.Clone(req).(*auditv1.QueryRequest)
	if account != "" {
		found := false
		if id, found, err = resolveAccount(ctx, client, account); err != nil || !found {
			return nil, "", err
		}
		r.AccountId = id
	}
	err = client.Query(ctx, r, func(ev *auditv1.Event) error {
		evs = append(evs, zonedEvent{log: l.name, ev: ev})
		return nil
	})
	return evs, id, err
}
