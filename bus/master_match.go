package bus

import "slices"

// The match index: a signal is checked against the matches that could
// select it, not against every endpoint's, so the cost of a delivery, and
// of a join or a death (whose notices are signals too), grows with the
// watchers that care, not with the endpoints on the bus
// (docs/protocol-bus.md, "Delivery, exactly": the master is free to index).
//
// A match with an INTERFACE or a MEMBER rule, or both, is filed under
// those values ("" for the one it lacks: no signal has an empty
// interface or member), and under its ARG 0 value when it has one; any
// other match is checked for every signal.

type matchKey struct {
	iface, member string
	arg0          string
	hasArg0       bool
}

// matchIndex counts, per key, the matches each endpoint filed there.
type matchIndex struct {
	byKey     map[matchKey]*connSet
	unindexed *connSet
	gen       uint64 // visit stamp, so an endpoint is checked once per signal
}

// connSet is a set of endpoints, each with the number of its matches filed
// in it. A slice, not a map, because each signal walks the whole set and
// walking a map costs several times walking a slice (most of the
// master's time per delivery at 1,000 subscribers, in the profile).
//
// A walk's fn may end an endpoint (a failed send), which takes its
// matches out while the set is walked: then remove leaves a hole (n 0)
// that the walk skips, and the set is compacted when the walk is over.
type connSet struct {
	conns   []*mconn
	n       []int
	at      map[*mconn]int // index in conns
	walking int            // walks in progress
	holes   int
}

func (x *connSet) len() int {
	if x == nil {
		return 0
	}
	return len(x.conns) - x.holes
}

// walk calls fn for each endpoint in the set.
func (x *connSet) walk(fn func(*mconn)) {
	if x == nil {
		return
	}
	x.walking++
	for i := 0; i < len(x.conns); i++ {
		if x.n[i] > 0 {
			fn(x.conns[i])
		}
	}
	if x.walking--; x.walking == 0 && x.holes > 0 {
		j := 0
		for i, c := range x.conns {
			if x.n[i] > 0 {
				x.conns[j], x.n[j] = c, x.n[i]
				x.at[c] = j
				j++
			}
		}
		clear(x.conns[j:])
		x.conns, x.n, x.holes = x.conns[:j], x.n[:j], 0
	}
}

func (x *connSet) add(c *mconn) {
	if i, ok := x.at[c]; ok {
		x.n[i]++
		return
	}
	if x.at == nil {
		x.at = map[*mconn]int{}
	}
	x.at[c] = len(x.conns)
	x.conns = append(x.conns, c)
	x.n = append(x.n, 1)
}

// remove takes one of c's matches out of the set.
func (x *connSet) remove(c *mconn) {
	i, ok := x.at[c]
	if !ok {
		return
	}
	if x.n[i]--; x.n[i] > 0 {
		return
	}
	delete(x.at, c)
	if x.walking > 0 {
		x.holes++
		return
	}
	last := len(x.conns) - 1
	if i != last {
		x.conns[i], x.n[i] = x.conns[last], x.n[last]
		x.at[x.conns[i]] = i
	}
	x.conns[last] = nil
	x.conns, x.n = x.conns[:last], x.n[:last]
}

func keyOf(m *AddMatchBody) (matchKey, bool) {
	var k matchKey
	var hasI, hasM bool
	for _, r := range m.Rules {
		switch {
		case r.Kind == RuleInterface:
			k.iface, hasI = r.Value, true
		case r.Kind == RuleMember:
			k.member, hasM = r.Value, true
		case r.Kind == RuleArg && r.Index == 0:
			k.arg0, k.hasArg0 = r.Value, true
		}
	}
	return k, hasI || hasM
}

// add files m, one of c's matches, and lists it in c.mlist.
func (x *matchIndex) add(c *mconn, m *AddMatchBody) {
	c.mlist = append(c.mlist, m)
	k, ok := keyOf(m)
	if !ok {
		if x.unindexed == nil {
			x.unindexed = &connSet{}
		}
		x.unindexed.add(c)
		return
	}
	if x.byKey == nil {
		x.byKey = map[matchKey]*connSet{}
	}
	set := x.byKey[k]
	if set == nil {
		set = &connSet{}
		x.byKey[k] = set
	}
	set.add(c)
}

// remove takes m, one of c's matches, out of the index and of c.mlist.
func (x *matchIndex) remove(c *mconn, m *AddMatchBody) {
	if i := slices.Index(c.mlist, m); i >= 0 {
		c.mlist = slices.Delete(c.mlist, i, i+1)
	}
	k, ok := keyOf(m)
	set := x.unindexed
	if ok {
		set = x.byKey[k]
	}
	if set == nil {
		return
	}
	set.remove(c)
	if ok && set.len() == 0 {
		delete(x.byKey, k)
	}
}

// removeAll drops every match of c.
func (x *matchIndex) removeAll(c *mconn) {
	for _, m := range c.matches {
		x.remove(c, m)
	}
	c.mlist = nil
}

func (x *matchIndex) empty() bool { return len(x.byKey) == 0 && x.unindexed.len() == 0 }

// each calls fn once for every endpoint with a match that could select a
// signal with these properties.
func (x *matchIndex) each(sig Signal, fn func(*mconn)) {
	x.gen++
	gen := x.gen
	once := func(c *mconn) {
		if c.visit != gen {
			c.visit = gen
			fn(c)
		}
	}
	visit := func(set *connSet) { set.walk(once) }
	visit(x.unindexed)
	if len(x.byKey) == 0 {
		return
	}
	var arg0 *Arg
	for i := range sig.Args {
		if sig.Args[i].Index == 0 {
			arg0 = &sig.Args[i]
		}
	}
	for _, k := range [3]matchKey{{iface: sig.Interface, member: sig.Member}, {iface: sig.Interface}, {member: sig.Member}} {
		visit(x.byKey[k])
		if arg0 != nil {
			k.arg0, k.hasArg0 = arg0.Value, true
			visit(x.byKey[k])
		}
	}
}
