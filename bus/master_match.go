package bus

// The match index: a signal is checked against the matches that could
// select it, not against every endpoint's, so the cost of a delivery, and
// of a join or a death (whose notices are signals too), grows with the
// watchers that care, not with the endpoints on the bus
// (docs/protocol-bus.md, "Delivery, exactly": the master is free to index).
//
// A match with an INTERFACE and a MEMBER rule is filed under both values,
// and under its ARG 0 value when it has one; any other match is checked
// for every signal.

type matchKey struct {
	iface, member string
	arg0          string
	hasArg0       bool
}

// matchIndex counts, per key, the matches each endpoint filed there.
type matchIndex struct {
	byKey     map[matchKey]map[*mconn]int
	unindexed map[*mconn]int
	gen       uint64 // visit stamp, so an endpoint is checked once per signal
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
	return k, hasI && hasM
}

func (x *matchIndex) add(c *mconn, m *AddMatchBody) {
	k, ok := keyOf(m)
	if !ok {
		if x.unindexed == nil {
			x.unindexed = map[*mconn]int{}
		}
		x.unindexed[c]++
		return
	}
	if x.byKey == nil {
		x.byKey = map[matchKey]map[*mconn]int{}
	}
	set := x.byKey[k]
	if set == nil {
		set = map[*mconn]int{}
		x.byKey[k] = set
	}
	set[c]++
}

func (x *matchIndex) remove(c *mconn, m *AddMatchBody) {
	k, ok := keyOf(m)
	set := x.unindexed
	if ok {
		set = x.byKey[k]
	}
	if set[c]--; set[c] <= 0 {
		delete(set, c)
		if ok && len(set) == 0 {
			delete(x.byKey, k)
		}
	}
}

// removeAll drops every match of c.
func (x *matchIndex) removeAll(c *mconn) {
	for _, m := range c.matches {
		x.remove(c, m)
	}
}

func (x *matchIndex) empty() bool { return len(x.byKey) == 0 && len(x.unindexed) == 0 }

// each calls fn once for every endpoint with a match that could select a
// signal with these properties.
func (x *matchIndex) each(sig Signal, fn func(*mconn)) {
	x.gen++
	visit := func(set map[*mconn]int) {
		for c := range set {
			if c.visit != x.gen {
				c.visit = x.gen
				fn(c)
			}
		}
	}
	visit(x.unindexed)
	if len(x.byKey) == 0 {
		return
	}
	k := matchKey{iface: sig.Interface, member: sig.Member}
	visit(x.byKey[k])
	for _, a := range sig.Args {
		if a.Index == 0 {
			k.arg0, k.hasArg0 = a.Value, true
			visit(x.byKey[k])
		}
	}
}
