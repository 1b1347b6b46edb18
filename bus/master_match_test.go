package bus

import (
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
