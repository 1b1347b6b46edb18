package broker

import "github.com/porter-ipc/porter/fdpass"

// Policy decides whether a peer may have the socket a request names. cred
// is the peer's SO_PEERCRED; r is its request, whose values are already
// checked (a known protocol and share mode, a valid address and name).
// When it refuses, the Decision's Reason reaches the client as the text of
// its ErrDenied error. The broker calls it for every REQUEST, before
// anything is cached or created, from the connection's own goroutine and
// without holding its locks: calls may run at once, and a slow one delays
// that connection only. A PICKUP is not checked again; its token's
// request was.
//
// Config.Rules (Rules.Policy) is the default; an embedder sets
// Config.Policy to decide by anything else (a pid, a cgroup, a name).
type Policy func(cred fdpass.Cred, r Request) Decision

// Decision is a Policy's answer.
type Decision struct {
	Allow  bool
	Reason string // why: which rule decided, or the default
}

// Policy returns the rules as a Policy: a peer is judged by its uid and
// gid, and the request by protocol and address. Nil Rules give the default
// policy alone (ports 1024 and above, and port 0, for everyone).
func (r *Rules) Policy() Policy {
	return func(cred fdpass.Cred, req Request) Decision {
		return r.Check(cred.UID, cred.GID, req.Proto, req.Addr)
	}
}

// deniedText is what the client is told when a policy refuses without a
// reason.
const deniedText = "refused by the broker's policy"
