// Package access decides from a peer's credentials whether a local service
// serves it, with rules in s6's accessrules format: a directory tree
// (uid/<n>/allow, gid/<n>/deny, uid/default/…, each rule with an optional
// env/ directory) or the CDB file that s6-accessrules-cdb-from-fs compiles
// from it. A rules directory or CDB made for s6-ipcserver-access works
// unchanged and gives the same decisions.
//
// Lookup order (Check): uid/self when the peer's uid is our effective uid,
// uid/<uid>, gid/self when the peer's gid is our effective gid, gid/<gid>,
// uid/default. The first rule that says allow or deny decides; in one rule
// allow wins over deny; when no rule matches, the peer is denied.
package access

import (
	"errors"
	"os"
	"strconv"
	"strings"
)

// Verdict is what a rule says about a key.
type Verdict int

const (
	// NoMatch means no rule decided: the key has neither allow nor deny.
	NoMatch Verdict = iota
	// Allow means the rule has an allow file (it wins over deny).
	Allow
	// Deny means the rule has a deny file and no allow file.
	Deny
)

// String returns "allow", "deny" or "nomatch", the words porter's logs
// use for v.
func (v Verdict) String() string {
	switch v {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	}
	return "nomatch"
}

// EnvChange is one change a rule's env/ directory makes to the environment
// of the program that serves the peer: set Name to Value, or unset it.
type EnvChange struct {
	Name  string
	Value string
	Unset bool // an empty file in env/ unsets the variable
}

// Result is the outcome of a lookup.
type Result struct {
	Verdict Verdict
	Key     string      // the key that decided, such as "uid/0"; "" for NoMatch
	Env     []EnvChange // env changes of an allowing rule, in the order found
	// Exec is the content of an allowing rule's exec file, which
	// s6-ipcserver-access runs with execlineb instead of the program;
	// so does ipc.Spawn.
	Exec string
}

// Allowed reports whether the peer may be served.
func (r Result) Allowed() bool { return r.Verdict == Allow }

// Decision is a policy's answer about a peer: whether to serve it, why,
// and what the program that serves an allowed peer gets. Decide makes it
// from access rules; ipc.Policy lets an embedder make its own.
type Decision struct {
	Allow  bool
	Reason string      // the key of the rule that decided ("uid/0"), or the policy's own words
	Env    []EnvChange // for an allowed peer: changes to its program's environment
	Exec   string      // for an allowed peer: what runs instead of the program (Result.Exec)
	Err    error       // the policy could not decide (unreadable rules): the peer is denied
}

// Decide looks a peer with uid and gid up in rs (Check) and returns the
// outcome as a Decision: Allow only when a rule allows, Reason the key of
// the rule that decided ("" when none matched), and a failed lookup as a
// denial with Err set.
func Decide(rs Ruleset, uid, gid int) Decision {
	res, err := Check(rs, uid, gid)
	if err != nil {
		return Decision{Err: err}
	}
	return Decision{Allow: res.Allowed(), Reason: res.Key, Env: res.Env, Exec: res.Exec}
}

// Ruleset looks up single keys; Dir and CDB implement it.
type Ruleset interface {
	// Lookup returns the verdict of the rule named key (such as
	// "uid/0"), NoMatch when there is none.
	Lookup(key string) (Result, error)
}

// ErrMalformed is the cause of an error about a rules database whose
// content is not in the accessrules format.
var ErrMalformed = errors.New("malformed accessrules database")

// Keys returns the keys Check looks up for a peer with uid and gid, in
// order, given our own effective selfUID and selfGID.
func Keys(uid, gid, selfUID, selfGID int) []string {
	keys := make([]string, 0, 5)
	if uid == selfUID {
		keys = append(keys, "uid/self")
	}
	keys = append(keys, "uid/"+strconv.Itoa(uid))
	if gid == selfGID {
		keys = append(keys, "gid/self")
	}
	keys = append(keys, "gid/"+strconv.Itoa(gid), "uid/default")
	return keys
}

// Check looks up a peer with uid and gid in rs, with "self" meaning this
// process's effective uid and gid. The first Allow or Deny decides; no
// match gives a Result with Verdict NoMatch, which is not Allowed. An
// error (an unreadable rule, a malformed database) stops the lookup: the
// caller must deny.
func Check(rs Ruleset, uid, gid int) (Result, error) {
	return CheckAs(rs, uid, gid, os.Geteuid(), os.Getegid())
}

// CheckAs is Check with "self" meaning selfUID and selfGID.
func CheckAs(rs Ruleset, uid, gid, selfUID, selfGID int) (Result, error) {
	for _, k := range Keys(uid, gid, selfUID, selfGID) {
		r, err := rs.Lookup(k)
		if err != nil {
			return Result{}, err
		}
		if r.Verdict != NoMatch {
			r.Key = k
			return r, nil
		}
	}
	return Result{}, nil
}

// ApplyEnv returns env (a list of NAME=value) with changes applied: each
// set replaces an existing NAME or is appended, each unset removes NAME.
func ApplyEnv(env []string, changes []EnvChange) []string {
	out := append([]string(nil), env...)
	for _, c := range changes {
		prefix := c.Name + "="
		kept := out[:0]
		for _, kv := range out {
			if !strings.HasPrefix(kv, prefix) {
				kept = append(kept, kv)
			}
		}
		out = kept
		if !c.Unset {
			out = append(out, prefix+c.Value)
		}
	}
	return out
}

// validKey refuses keys that could leave the rules directory.
func validKey(key string) bool {
	if key == "" || strings.HasPrefix(key, "/") || strings.ContainsRune(key, 0) {
		return false
	}
	for _, part := range strings.Split(key, "/") {
		if part == "" || part == "." || part == ".." {
			return false
		}
	}
	return true
}
