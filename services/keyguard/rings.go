package keyguard

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/credmatrix/credmatrix/platform/domainerr"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// ringState is the in-memory state of one ring: its policy, its minimum
// decryption version and its usage counters. Counters are atomics, so
// Encrypt does not take a lock; Flush persists them.
type ringState struct {
	policy RingPolicy

	// mu serialises rotation and retirement of the ring within this
	// process, so the version a rotation announces in its audit event is
	// the one it creates; the store's rotation lock does the same across
	// replicas.
	mu sync.Mutex

	storedMin atomic.Uint32

	cmu    sync.RWMutex
	counts map[uint32]*counter
}

// counter counts the messages sealed under one key version: base is the
// count saved in the store (by every replica) as last read, delta what this
// replica counted since its last flush.
type counter struct {
	base, delta atomic.Uint64
}

func (c *counter) total() uint64 { return c.base.Load() + c.delta.Load() }

func newRingState(p RingPolicy) *ringState {
	return &ringState{policy: p, counts: map[uint32]*counter{}}
}

// setBase installs the saved counts read from the store.
func (rs *ringState) setBase(saved map[uint32]uint64) {
	rs.cmu.Lock()
	defer rs.cmu.Unlock()
	for v, c := range rs.counts {
		c.base.Store(saved[v])
	}
	for v, n := range saved {
		if rs.counts[v] == nil {
			c := &counter{}
			c.base.Store(n)
			rs.counts[v] = c
		}
	}
}

// minDecrypt is the effective minimum decryption version: the configured
// floor or the stored value, whichever is higher, and at least 1.
func (rs *ringState) minDecrypt() uint32 {
	return max(rs.policy.MinDecryptVersion, rs.storedMin.Load(), 1)
}

func (rs *ringState) counter(version uint32) *counter {
	rs.cmu.RLock()
	c := rs.counts[version]
	rs.cmu.RUnlock()
	if c != nil {
		return c
	}
	rs.cmu.Lock()
	defer rs.cmu.Unlock()
	if c = rs.counts[version]; c == nil {
		c = &counter{}
		rs.counts[version] = c
	}
	return c
}

// count adds one message to version's counter and, when the ring's usage
// limit is reached, asks the rotation loop to rotate (without blocking).
func (rs *ringState) count(version uint32, kick chan struct{}) {
	c := rs.counter(version)
	n := c.delta.Add(1) + c.base.Load()
	if rs.policy.MaxEncryptions > 0 && n == rs.policy.MaxEncryptions {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
}

// RotationKick is signalled when a ring reaches its usage limit; the cmd's
// rotation loop then calls RotateDue at once instead of at its next tick.
func (s *Service) RotationKick() <-chan struct{} { return s.kick }

// isAdmin checks that caller is an administrator; a refusal is audited
// with the kind of the attempted operation.
func (s *Service) isAdmin(ctx context.Context, o *op) error {
	if s.admins[o.caller] {
		return nil
	}
	deny := &domainerr.Error{Code: domainerr.PermissionDenied, Message: fmt.Sprintf("%s is not a keyguard administrator", o.caller)}
	if _, err := s.record(ctx, o, auditv1.Decision_DECISION_DENY, deny.Message); err != nil {
		return err
	}
	return deny
}

func (s *Service) ring(dataClass, region string) (Ring, *ringState, error) {
	if err := validateName("data_class", dataClass); err != nil {
		return Ring{}, nil, err
	}
	if err := validateName("region", region); err != nil {
		return Ring{}, nil, err
	}
	r := Ring{DataClass: dataClass, Region: region}
	rs, ok := s.rings[r]
	if !ok {
		return r, nil, &domainerr.Error{Code: domainerr.NotFound, Message: fmt.Sprintf("no key ring for data class %s in region %s", dataClass, region)}
	}
	return r, rs, nil
}

// RotateKey adds a new key version to the ring and makes it primary, for an
// administrator. The rotation is audited before it happens (with the
// version it will create), and a backend failure afterwards is audited as
// an error; audit down means no rotation.
func (s *Service) RotateKey(ctx context.Context, caller, dataClass, region, reason string) (KeyRef, uint64, error) {
	if len(reason) > 1024 {
		return KeyRef{}, 0, &domainerr.Error{Code: domainerr.Invalid, Message: "reason: exceeds 1024 bytes"}
	}
	r, rs, err := s.ring(dataClass, region)
	if err != nil {
		return KeyRef{}, 0, err
	}
	o := &op{caller: caller, kind: auditv1.Kind_KIND_KEY_ROTATE, ring: r}
	if err := s.isAdmin(ctx, o); err != nil {
		return KeyRef{}, 0, err
	}
	if reason == "" {
		reason = "on demand"
	}
	unlock, err := s.lockAndReload(ctx)
	if err != nil {
		return KeyRef{}, 0, err
	}
	defer unlock()
	return s.rotate(ctx, o, rs, "rotated by "+caller+": "+reason)
}

// rotate rotates one ring; the caller holds the rotation lock and has
// reloaded the state (lockAndReload).
func (s *Service) rotate(ctx context.Context, o *op, rs *ringState, reason string) (KeyRef, uint64, error) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	cur, err := s.backend.Primary(ctx, o.ring.DataClass, o.ring.Region)
	if err != nil {
		return KeyRef{}, 0, backendError(o.ring, err)
	}
	o.fromVersion, o.version = cur, cur+1
	seq, err := s.record(ctx, o, auditv1.Decision_DECISION_ALLOW, reason)
	if err != nil {
		return KeyRef{}, 0, err
	}
	v, err := s.backend.Rotate(ctx, o.ring.DataClass, o.ring.Region)
	if err == nil && v != cur+1 {
		err = fmt.Errorf("backend created version %d, want %d", v, cur+1)
	}
	if err != nil {
		return KeyRef{}, 0, s.fail(ctx, o, backendError(o.ring, err))
	}
	return KeyRef{o.ring.DataClass, o.ring.Region, v}, seq, nil
}

// RotateDue rotates every ring whose primary version is older than its
// rotation period or has sealed its maximum number of messages, as the
// system principal, and returns the new versions. The cmd calls it on a
// timer and on RotationKick; with replicas, each calls it and the rotation
// lock makes them take turns, each deciding on the state the previous one
// left, so a ring due once rotates once. It saves this replica's usage
// counts first.
func (s *Service) RotateDue(ctx context.Context) ([]KeyRef, error) {
	if !s.rotates() {
		return nil, s.Flush(ctx)
	}
	unlock, err := s.lockAndReload(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var out []KeyRef
	for _, r := range s.ringList() {
		rs := s.rings[r]
		due, why, err := s.due(ctx, r, rs)
		if err != nil {
			return out, err
		}
		if !due {
			continue
		}
		ref, _, err := s.rotate(ctx, &op{caller: SystemPrincipal, kind: auditv1.Kind_KIND_KEY_ROTATE, ring: r}, rs, "automatic rotation: "+why)
		if err != nil {
			return out, err
		}
		out = append(out, ref)
	}
	return out, nil
}

// rotates reports whether any ring rotates by itself.
func (s *Service) rotates() bool {
	for _, rs := range s.rings {
		if rs.policy.RotationPeriod > 0 || rs.policy.MaxEncryptions > 0 {
			return true
		}
	}
	return false
}

func (s *Service) ringList() []Ring {
	rings := slices.Collect(maps.Keys(s.rings))
	slices.SortFunc(rings, func(a, b Ring) int {
		if a.DataClass != b.DataClass {
			return compare(a.DataClass, b.DataClass)
		}
		return compare(a.Region, b.Region)
	})
	return rings
}

func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// due reports whether the ring must rotate now, and why.
func (s *Service) due(ctx context.Context, r Ring, rs *ringState) (bool, string, error) {
	if rs.policy.RotationPeriod == 0 && rs.policy.MaxEncryptions == 0 {
		return false, "", nil
	}
	vs, err := s.backend.Versions(ctx, r.DataClass, r.Region)
	if err != nil {
		return false, "", backendError(r, err)
	}
	if len(vs) == 0 {
		return false, "", nil
	}
	primary := vs[len(vs)-1]
	if n := rs.counter(primary.Version).total(); rs.policy.MaxEncryptions > 0 && n >= rs.policy.MaxEncryptions {
		return true, fmt.Sprintf("version %d sealed %d messages (limit %d)", primary.Version, n, rs.policy.MaxEncryptions), nil
	}
	if p := rs.policy.RotationPeriod; p > 0 && !s.clock().Before(primary.Created.Add(p)) {
		return true, fmt.Sprintf("version %d is older than %s", primary.Version, p), nil
	}
	return false, "", nil
}

// SetMinDecryptVersion retires every key version below min: envelopes under
// them no longer decrypt or rewrap. For an administrator, audited first.
// min may not exceed the primary version, nor go below the configured
// floor.
func (s *Service) SetMinDecryptVersion(ctx context.Context, caller, dataClass, region string, min uint32, reason string) (uint64, error) {
	r, rs, err := s.ring(dataClass, region)
	if err != nil {
		return 0, err
	}
	o := &op{caller: caller, kind: auditv1.Kind_KIND_KEY_ROTATE, ring: r, detail: func(kd *auditv1.KeyDetail) {
		kd.MinDecryptVersion = min
		kd.Operation = "set-min-decrypt-version"
	}}
	if err := s.isAdmin(ctx, o); err != nil {
		return 0, err
	}
	unlock, err := s.lockAndReload(ctx)
	if err != nil {
		return 0, err
	}
	defer unlock()
	rs.mu.Lock()
	defer rs.mu.Unlock()
	primary, err := s.backend.Primary(ctx, r.DataClass, r.Region)
	if err != nil {
		return 0, backendError(r, err)
	}
	switch {
	case min == 0 || min > primary:
		return 0, &domainerr.Error{Code: domainerr.Invalid, Message: fmt.Sprintf("min_decrypt_version: must be 1 to the primary version %d", primary)}
	case min < rs.policy.MinDecryptVersion:
		return 0, &domainerr.Error{Code: domainerr.Invalid, Message: fmt.Sprintf("min_decrypt_version: below the configured floor %d", rs.policy.MinDecryptVersion)}
	}
	o.version = primary
	if reason == "" {
		reason = "by request"
	}
	seq, err := s.record(ctx, o, auditv1.Decision_DECISION_ALLOW, fmt.Sprintf("minimum decryption version set to %d by %s: %s", min, caller, reason))
	if err != nil {
		return 0, err
	}
	if err := s.store.SetMinDecryptVersion(ctx, r, min); err != nil {
		return 0, s.fail(ctx, o, &domainerr.Error{Code: domainerr.Unavailable, Message: "state store unavailable; minimum version not changed", Err: err})
	}
	rs.storedMin.Store(min)
	return seq, nil
}

// VersionState is the life-cycle state of a key version.
type VersionState uint8

// The states of a key version; values match the KeyVersionState enum of
// the v1 API.
const (
	// StatePrimary is the newest version, used for new encryptions.
	StatePrimary VersionState = 1
	// StateDecryptOnly is an older version that still decrypts.
	StateDecryptOnly VersionState = 2
	// StateRetired is below the ring's minimum decryption version.
	StateRetired VersionState = 3
)

// KeyVersionInfo describes one version of a ring.
type KeyVersionInfo struct {
	VersionInfo
	// State is its life-cycle state.
	State VersionState
	// EncryptCount counts the messages sealed under it.
	EncryptCount uint64
}

// RingDescription is what DescribeKeyRing returns.
type RingDescription struct {
	// Ring is the ring described.
	Ring Ring
	// Backend names the KEK backend.
	Backend string
	// Versions, newest first.
	Versions []KeyVersionInfo
	// Primary is the newest version.
	Primary uint32
	// MinDecryptVersion is the oldest version allowed to decrypt.
	MinDecryptVersion uint32
	// NextRotation is when rotation by age is due; zero when never.
	NextRotation time.Time
	// RotationDue reports that rotation is due now.
	RotationDue bool
}

// DescribeKeyRing describes a ring's versions, usage and rotation, for an
// administrator or a caller with a describe grant on the ring (a denial is
// audited).
func (s *Service) DescribeKeyRing(ctx context.Context, caller, dataClass, region string) (RingDescription, error) {
	r, rs, err := s.ring(dataClass, region)
	if err != nil {
		return RingDescription{}, err
	}
	// Usage counts saved by other replicas do not move the state version:
	// read everything afresh, so the counts shown are every replica's.
	if err := s.reload(ctx, 0, true); err != nil {
		return RingDescription{}, errStateUnavailable(err)
	}
	if !s.admins[caller] {
		o := &op{caller: caller, kind: auditv1.Kind_KIND_KEY_ROTATE, operation: OpDescribe, ring: r,
			detail: func(kd *auditv1.KeyDetail) { kd.Operation = "describe" }}
		if err := s.authorize(ctx, o); err != nil {
			return RingDescription{}, err
		}
	}
	vs, err := s.backend.Versions(ctx, r.DataClass, r.Region)
	if err != nil {
		return RingDescription{}, backendError(r, err)
	}
	d := RingDescription{Ring: r, Backend: s.backendName, MinDecryptVersion: rs.minDecrypt()}
	if len(vs) > 0 {
		d.Primary = vs[len(vs)-1].Version
		if p := rs.policy.RotationPeriod; p > 0 {
			d.NextRotation = vs[len(vs)-1].Created.Add(p)
		}
	}
	for i := len(vs) - 1; i >= 0; i-- {
		v := KeyVersionInfo{VersionInfo: vs[i], EncryptCount: rs.counter(vs[i].Version).total(), State: StateDecryptOnly}
		switch {
		case v.Version == d.Primary:
			v.State = StatePrimary
		case v.Version < d.MinDecryptVersion:
			v.State = StateRetired
		}
		d.Versions = append(d.Versions, v)
	}
	d.RotationDue, _, err = s.due(ctx, r, rs)
	if err != nil {
		return RingDescription{}, err
	}
	return d, nil
}
