package bus

import (
	"slices"
	"testing"
)

// TestBusSignals builds each notice and decodes it as an endpoint reads
// its master connection: valid, with the doc's path, interface, member,
// args and body.
func TestBusSignals(t *testing.T) {
	r := &Rules{Path: PathFromMaster, Joined: true}
	decode := func(f *Frame, err error) (*Frame, Signal) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		b, err := r.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		g, err := r.Decode(b, 0)
		if err != nil {
			t.Fatal(err)
		}
		s, err := SignalOf(g)
		if err != nil {
			t.Fatal(err)
		}
		if g.Source != AddrBus || g.Type != TypeSignal {
			t.Fatalf("%+v", g)
		}
		return g, s
	}
	argv := func(s Signal) (v []string) {
		for _, a := range s.Args {
			v = append(v, a.Value)
		}
		return v
	}

	f, s := decode(NameOwnerChanged(DefaultBloom, 1, "com.example.peer", 0, 9))
	if s.Path != DBusPath || s.Interface != DBusInterface || s.Member != "NameOwnerChanged" ||
		!slices.Equal(argv(s), []string{"com.example.peer", "", ":1.9"}) || !f.Multicast() {
		t.Errorf("NameOwnerChanged: %+v", s)
	}
	if old, new, err := ParseNameOwnerChanged(f.Body); err != nil || old != 0 || new != 9 {
		t.Errorf("NameOwnerChanged body: %d %d %v", old, new, err)
	}
	// The outline's watch (step 3) selects it: its match bloom is inside.
	bloom, _ := f.Field(FieldBloom)
	watch := MatchBloom(DefaultBloom, []Rule{{Kind: RuleInterface, Value: DBusInterface},
		{Kind: RuleMember, Value: "NameOwnerChanged"}, {Kind: RuleArg, Value: "com.example.peer"}})
	if !Contains(bloom, watch) {
		t.Error("the outline's match does not pass NameOwnerChanged's bloom")
	}

	f, s = decode(NameAcquired(2, "a.b", 7))
	if s.Member != "NameAcquired" || f.Destination != 7 || f.Multicast() || !slices.Equal(argv(s), []string{"a.b"}) {
		t.Errorf("NameAcquired: %+v %+v", f, s)
	}
	if _, ok := f.Field(FieldBloom); ok {
		t.Error("a unicast notice carries a BLOOM")
	}
	f, s = decode(NameLost(3, "a.b", 7))
	if s.Member != "NameLost" || f.Destination != 7 {
		t.Errorf("NameLost: %+v", s)
	}
	f, s = decode(EndpointGone(DefaultBloom, 4, 0, 9, GoneDied))
	if s.Path != PorterPath || s.Interface != PorterInterface || !slices.Equal(argv(s), []string{":1.9"}) || len(f.Body) != 16 {
		t.Errorf("EndpointGone: %+v", s)
	}
	if a, why, err := ParseEndpointGone(f.Body); err != nil || a != 9 || why != GoneDied {
		t.Errorf("EndpointGone body: %d %d %v", a, why, err)
	}
	f, s = decode(Lost(5, 7, 3, 10))
	if s.Member != "Lost" || s.Args != nil || len(f.Body) != 16 {
		t.Errorf("Lost: %+v", s)
	}
}
