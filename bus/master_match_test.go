package bus

import (
	"maps"
	"slices"
	"testing"
)

// The index visits exactly the endpoints whose matches could select a
// signal, each once; the exact rules decide after it.
func TestMatchIndex(t *testing.T) {
	var x matchIndex
	mk := func(rules ...Rule) *AddMatchBody { return &AddMatchBody{Rules: rules} }
	iface, member := Rule{Kind: RuleInterface, Value: DBusInterface}, Rule{Kind: RuleMember, Value: MemberNameOwnerChanged}
	a, b, c, d, e := &mconn{fd: 1}, &mconn{fd: 2}, &mconn{fd: 3}, &mconn{fd: 4}, &mconn{fd: 5}
	x.add(a, mk(iface, member, Rule{Kind: RuleArg, Index: 0, Value: "com.example.A"}))
	x.add(b, mk(iface, member, Rule{Kind: RuleArg, Index: 0, Value: "com.example.B"}))
	x.add(c, mk(iface, member)) // every NameOwnerChanged
	dm := mk(Rule{Kind: RuleArg0Namespace, Value: "com.example"})
	d.matches = map[uint64]*AddMatchBody{1: dm}
	x.add(d, dm) // unindexed: checked always
	x.add(e, mk(iface, member, Rule{Kind: RuleArg, Index: 0, Value: "com.example.A"}))
	x.add(e, mk(iface, member)) // two matches, visited once
	visited := func(sig Signal) []int {
		var got []int
		x.each(sig, func(m *mconn) { got = append(got, m.fd) })
		slices.Sort(got)
		return got
	}
	sig := Signal{Interface: DBusInterface, Member: MemberNameOwnerChanged, Args: []Arg{{0, ArgString, "com.example.A"}}}
	if got := visited(sig); !slices.Equal(got, []int{1, 3, 4, 5}) {
		t.Errorf("NameOwnerChanged for A visits %v, want [1 3 4 5]", got)
	}
	other := Signal{Interface: "com.example.I", Member: "M"}
	if got := visited(other); !slices.Equal(got, []int{4}) {
		t.Errorf("another signal visits %v, want only the unindexed [4]", got)
	}
	x.remove(c, mk(iface, member))
	x.removeAll(d)
	if got := visited(sig); !slices.Equal(got, []int{1, 5}) {
		t.Errorf("after removals %v", got)
	}
}

// A walk's fn may end endpoints (a failed send kills the receiver), which
// takes their matches out of the set being walked: the walk skips the
// ones not reached yet, visits every other once, and the set is whole
// again afterwards.
func TestMatchIndexRemoveDuringWalk(t *testing.T) {
	var x matchIndex
	var conns []*mconn
	for i := range 6 {
		c := &mconn{fd: i + 1}
		m := &AddMatchBody{Rules: []Rule{{Kind: RulePath, Value: "/p"}}} // unindexed
		c.matches = map[uint64]*AddMatchBody{1: m}
		x.add(c, m)
		conns = append(conns, c)
	}
	seen := map[int]int{}
	x.each(Signal{Path: "/p"}, func(c *mconn) {
		seen[c.fd]++
		if c.fd == 3 { // remove one visited before it and one after
			x.removeAll(conns[0])
			x.removeAll(conns[4])
			if n := x.unindexed.len(); n != 4 {
				t.Errorf("during the walk the set has %d, want 4", n)
			}
		}
	})
	if want := map[int]int{1: 1, 2: 1, 3: 1, 4: 1, 6: 1}; !maps.Equal(seen, want) {
		t.Errorf("visited %v, want %v", seen, want)
	}
	var got []int
	x.each(Signal{Path: "/p"}, func(c *mconn) { got = append(got, c.fd) })
	slices.Sort(got)
	if !slices.Equal(got, []int{2, 3, 4, 6}) {
		t.Errorf("after the walk it visits %v, want [2 3 4 6]", got)
	}
	if s := x.unindexed; len(s.conns) != 4 || s.holes != 0 || len(s.at) != 4 {
		t.Errorf("not compacted: %d entries, %d holes, %d indexed", len(s.conns), s.holes, len(s.at))
	}
	x.removeAll(conns[1])
	x.add(conns[1], conns[1].matches[1])
	if x.unindexed.len() != 4 || len(conns[1].mlist) != 1 {
		t.Errorf("after remove and add: %d in the set, %d in mlist", x.unindexed.len(), len(conns[1].mlist))
	}
}

// A signal visits the endpoints whose match names its interface alone, or
// its member alone, but not those that name another interface or member:
// 1,000 subscribers of one interface cost nothing to a signal of another.
func TestMatchIndexInterfaceOrMemberOnly(t *testing.T) {
	var x matchIndex
	mk := func(rules ...Rule) *AddMatchBody { return &AddMatchBody{Rules: rules} }
	ifc := func(v string) Rule { return Rule{Kind: RuleInterface, Value: v} }
	mem := func(v string) Rule { return Rule{Kind: RuleMember, Value: v} }
	arg0 := func(v string) Rule { return Rule{Kind: RuleArg, Index: 0, Value: v} }
	for i, m := range []*AddMatchBody{
		mk(ifc("com.example.A")),                // 1
		mk(ifc("com.example.B")),                // 2
		mk(mem("Tick")),                         // 3
		mk(mem("Tock")),                         // 4
		mk(ifc("com.example.A"), arg0("red")),   // 5
		mk(ifc("com.example.A"), arg0("blue")),  // 6
		mk(mem("Tick"), arg0("red")),            // 7
		mk(Rule{Kind: RulePath, Value: "/a/b"}), // 8: unindexed
	} {
		x.add(&mconn{fd: i + 1}, m)
	}
	visited := func(sig Signal) []int {
		var got []int
		x.each(sig, func(m *mconn) { got = append(got, m.fd) })
		slices.Sort(got)
		return got
	}
	red := []Arg{{0, ArgString, "red"}}
	for _, c := range []struct {
		sig  Signal
		want []int
	}{
		{Signal{Interface: "com.example.A", Member: "Tick", Args: red}, []int{1, 3, 5, 7, 8}},
		{Signal{Interface: "com.example.A", Member: "Tick"}, []int{1, 3, 8}},
		{Signal{Interface: "com.example.B", Member: "Tock", Args: red}, []int{2, 4, 8}},
		{Signal{Interface: "com.example.C", Member: "Other"}, []int{8}},
	} {
		if got := visited(c.sig); !slices.Equal(got, c.want) {
			t.Errorf("%s.%s %v visits %v, want %v", c.sig.Interface, c.sig.Member, c.sig.Args, got, c.want)
		}
	}
}
