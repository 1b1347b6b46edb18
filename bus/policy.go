package bus

import (
	"slices"
	"strconv"
	"strings"

	"github.com/porter-ipc/porter/fdpass"
)

// Op is what an endpoint asks the master to allow.
type Op int

// The operations a Policy judges (docs/protocol-bus.md, "Policy").
const (
	OpJoin    Op = iota + 1 // HELLO
	OpOwn                   // REQUEST_NAME (also when it would only queue)
	OpTalk                  // CONNECT, a routed CALL or unicast SIGNAL, a multicast delivery to one receiver
	OpMatch                 // ADD_MATCH
	OpMonitor               // BECOME_MONITOR
)

// String names the operation as the policy section does ("OpTalk").
func (o Op) String() string {
	switch o {
	case OpJoin:
		return "OpJoin"
	case OpOwn:
		return "OpOwn"
	case OpTalk:
		return "OpTalk"
	case OpMatch:
		return "OpMatch"
	case OpMonitor:
		return "OpMonitor"
	}
	return "Op(?)"
}

// Peer is an endpoint as the master verified it.
type Peer struct {
	Address uint64      // the address concerned (the receiver for OpTalk)
	Cred    fdpass.Cred // SO_PEERCRED as of connect(2)
	Names   []string    // names the address owns now
}

// Request is what the policy judges; only the fields of its Op are set.
type Request struct {
	Op     Op
	Source uint64        // OpTalk, OpOwn: the asking address
	Name   string        // OpOwn: the name; OpTalk: the name the sender used, if any
	Peer   *Peer         // OpTalk: the receiver
	Match  *AddMatchBody // OpMatch: the match, rules decoded
}

// Decision is a Policy's answer; Reason reaches the endpoint as FAIL text.
type Decision struct {
	Allow  bool
	Reason string
}

// Policy decides whether the endpoint with credentials cred may do r. The
// master calls it from its one loop, never concurrently with itself, and
// must not be blocked by it for long. OpTalk decisions are cached per
// (sender endpoint, receiver endpoint) until Master.Revalidate or a name
// change on the bus.
type Policy func(cred fdpass.Cred, r Request) Decision

// DefaultPolicy is what `porter bus up` uses: anyone joins (the socket is
// mode 0666; the policy, not the file mode, decides), names are first
// come, first served (reserved names excepted), an endpoint talks to
// endpoints of its own uid and root talks to everyone, anyone may add
// matches (each delivery is still judged as OpTalk), and uid 0 or the
// master's own uid may monitor.
func DefaultPolicy(masterUID int) Policy {
	return func(cred fdpass.Cred, r Request) Decision {
		switch r.Op {
		case OpJoin, OpMatch:
			return Decision{Allow: true}
		case OpOwn:
			if ReservedName(r.Name) {
				return Decision{Reason: "the name " + r.Name + " is reserved to the bus"}
			}
			return Decision{Allow: true}
		case OpTalk:
			if r.Peer != nil && (cred.UID == 0 || cred.UID == r.Peer.Cred.UID) {
				return Decision{Allow: true}
			}
			return Decision{Reason: talkDenied(cred, r.Peer)}
		case OpMonitor:
			if cred.UID == 0 || cred.UID == masterUID {
				return Decision{Allow: true}
			}
			return Decision{Reason: "only root and the master's uid may monitor"}
		}
		return Decision{Reason: "unknown operation"}
	}
}

func talkDenied(cred fdpass.Cred, p *Peer) string {
	if p == nil {
		return "no receiver"
	}
	return "default policy: uid " + strconv.Itoa(cred.UID) + " may talk only to its own uid (the receiver " +
		FormatAddress(p.Address) + " is uid " + strconv.Itoa(p.Cred.UID) + "); root talks to everyone"
}

// OwnRule reserves the names under Prefix (Prefix itself, and every name
// that starts with Prefix + ".") to the listed uids and gids; root may
// always own them.
type OwnRule struct {
	Prefix string // a well-known name, or the first elements of one
	UIDs   []int  // users that may own names under Prefix
	GIDs   []int  // groups (primary gid at connect(2)) whose members may
}

// covers reports whether name falls under the rule's prefix.
func (r OwnRule) covers(name string) bool {
	return name == r.Prefix || strings.HasPrefix(name, r.Prefix+".")
}

// WithOwnRules is base with name ownership restricted by rules: a name
// under a rule's prefix may be owned only by a uid or gid the rule lists
// (or root); when several rules cover a name, the longest prefix decides.
// Names no rule covers, and every other operation, are base's to judge.
func WithOwnRules(base Policy, rules ...OwnRule) Policy {
	return func(cred fdpass.Cred, r Request) Decision {
		if r.Op == OpOwn && cred.UID != 0 {
			best := -1
			for i, rule := range rules {
				if rule.covers(r.Name) && (best < 0 || len(rule.Prefix) > len(rules[best].Prefix)) {
					best = i
				}
			}
			if best >= 0 {
				rule := rules[best]
				if !slices.Contains(rule.UIDs, cred.UID) && !slices.Contains(rule.GIDs, cred.GID) {
					return Decision{Reason: "names under " + rule.Prefix + " are reserved to other users (uid " +
						strconv.Itoa(cred.UID) + " may not own " + r.Name + ")"}
				}
			}
		}
		return base(cred, r)
	}
}
