package bus

import (
	"context"
	"maps"
	"strings"
	"testing"

	"github.com/porter-ipc/porter/internal/dbuspeer"
	"github.com/porter-ipc/porter/internal/dbuswire"
	"github.com/porter-ipc/porter/internal/testutil"
)

// Routing as dbus-broker does it (docs/dbus.md, "Routing"), checked with
// the lean D-Bus client, which sends exactly what it is told.

func dbusDial(t *testing.T, addr string) *dbuspeer.Conn {
	t.Helper()
	c, err := dbuspeer.Dial(strings.TrimPrefix(addr, "unix:path="))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readSkip reads the next message that is not one of the bus's signals.
func readSkip(t *testing.T, c *dbuspeer.Conn) *dbuspeer.Message {
	t.Helper()
	for {
		m, err := c.Read()
		if err != nil {
			t.Fatal(err)
		}
		if m.Sender == DriverName && m.Type == dbuswire.TypeSignal {
			continue
		}
		return m
	}
}

func ping(c *dbuspeer.Conn) (uint32, error) {
	return c.Send(&dbuspeer.Message{Type: dbuswire.TypeMethodCall, Destination: DriverName, Path: "/",
		Interface: "org.freedesktop.DBus.Peer", Member: "Ping"})
}

func TestDBusRouting(t *testing.T) {
	testutil.CheckLeaks(t)
	_, addr := dbusMaster(t)
	svc := dbusDial(t, addr)
	if err := svc.RequestName("com.example.svc"); err != nil {
		t.Fatal(err)
	}
	cli := dbusDial(t, addr)

	// The sender is stamped, serials and unknown flags pass through.
	serial, err := cli.Send(&dbuspeer.Message{Type: dbuswire.TypeMethodCall, Flags: dbuswire.FlagAllowInteractiveAuth | 0x40,
		Destination: "com.example.svc", Path: "/x", Interface: "com.example.I", Member: "M"})
	if err != nil {
		t.Fatal(err)
	}
	call := readSkip(t, svc)
	if call.Sender != cli.Name || call.Serial != serial || call.Flags != dbuswire.FlagAllowInteractiveAuth|0x40 || call.Destination != "com.example.svc" {
		t.Errorf("the callee saw %+v; want sender %s serial %d flags 0x44", call, cli.Name, serial)
	}

	// A reply nobody waits for is dropped: the callee's bogus reply to
	// serial 9999 never reaches the caller, the real one does.
	if _, err := svc.Send(&dbuspeer.Message{Type: dbuswire.TypeMethodReturn, ReplySerial: 9999, Destination: cli.Name}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Send(&dbuspeer.Message{Type: dbuswire.TypeMethodReturn, ReplySerial: call.Serial, Destination: cli.Name}); err != nil {
		t.Fatal(err)
	}
	if r := readSkip(t, cli); r.Type != dbuswire.TypeMethodReturn || r.ReplySerial != serial {
		t.Errorf("the caller got %+v, want the return for serial %d", r, serial)
	}
	// The same reply again: its slot is closed, so it is dropped too.
	if _, err := svc.Send(&dbuspeer.Message{Type: dbuswire.TypeMethodReturn, ReplySerial: call.Serial, Destination: cli.Name}); err != nil {
		t.Fatal(err)
	}

	// Nothing answers NO_REPLY_EXPECTED, not even the bus's error for a
	// name nobody owns: the next message is the Ping's return.
	if _, err := cli.Send(&dbuspeer.Message{Type: dbuswire.TypeMethodCall, Flags: dbuswire.FlagNoReplyExpected,
		Destination: "com.example.nobody", Path: "/", Member: "M"}); err != nil {
		t.Fatal(err)
	}
	p, err := ping(cli)
	if err != nil {
		t.Fatal(err)
	}
	if r := readSkip(t, cli); r.Type != dbuswire.TypeMethodReturn || r.ReplySerial != p {
		t.Errorf("after a NO_REPLY_EXPECTED call and a Ping: %+v", r)
	}

	// ServiceUnknown, and NameHasNoOwner with NO_AUTO_START.
	for _, c := range []struct {
		flags byte
		want  string
	}{{0, "org.freedesktop.DBus.Error.ServiceUnknown"}, {dbuswire.FlagNoAutoStart, "org.freedesktop.DBus.Error.NameHasNoOwner"}} {
		s, err := cli.Send(&dbuspeer.Message{Type: dbuswire.TypeMethodCall, Flags: c.flags, Destination: "com.example.nobody", Path: "/", Member: "M"})
		if err != nil {
			t.Fatal(err)
		}
		if r := readSkip(t, cli); r.Type != dbuswire.TypeError || r.ErrorName != c.want || r.ReplySerial != s {
			t.Errorf("flags %d: %+v, want %s", c.flags, r, c.want)
		}
	}

	// A callee that disconnects with the call pending: NoReply at once.
	s, err := cli.Send(&dbuspeer.Message{Type: dbuswire.TypeMethodCall, Destination: "com.example.svc", Path: "/", Member: "Hang"})
	if err != nil {
		t.Fatal(err)
	}
	if m := readSkip(t, svc); m.Member != "Hang" {
		t.Fatalf("the callee got %+v", m)
	}
	svc.Close()
	if r := readSkip(t, cli); r.Type != dbuswire.TypeError || r.ErrorName != "org.freedesktop.DBus.Error.NoReply" || r.ReplySerial != s {
		t.Errorf("the callee went: %+v, want NoReply", r)
	}
}

// TestDBusMatchesAgree: a native bloom match and a D-Bus match rule for
// the same properties select the same signals, whoever sends them.
func TestDBusMatchesAgree(t *testing.T) {
	testutil.CheckLeaks(t)
	m, addr := dbusMaster(t)
	native := dial(t, m, Options{})
	w, err := native.Watch(ctxT(t), 0, Rule{Kind: RuleInterface, Value: "com.example.I"}, Rule{Kind: RuleMember, Value: "Sig"},
		Rule{Kind: RuleArg, Index: 0, Value: "a"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	dw := dbusDial(t, addr)
	if err := dw.AddMatch("type='signal',interface='com.example.I',member='Sig',arg0='a'"); err != nil {
		t.Fatal(err)
	}
	dsend := dbusDial(t, addr)
	nsend := dial(t, m, Options{})
	str := func(v string) (string, []byte) { return Strings(v) }
	// From each side: (Sig, "a") selected; (Sig, "b") and (Other, "a") not.
	for _, c := range []struct{ member, arg string }{{"Sig", "b"}, {"Other", "a"}, {"Sig", "a"}} {
		sig, body := str(c.arg)
		if _, err := dsend.Send(&dbuspeer.Message{Type: dbuswire.TypeSignal, Path: "/o", Interface: "com.example.I", Member: c.member,
			Signature: sig, Body: body}); err != nil {
			t.Fatal(err)
		}
		if err := nsend.Publish(context.Background(), &Message{Path: "/o", Interface: "com.example.I", Member: c.member,
			Signature: sig, Body: body, Args: []Arg{{Index: 0, Kind: ArgString, Value: c.arg}}}); err != nil {
			t.Fatal(err)
		}
	}
	// Each watcher gets exactly two (Sig, "a"): one from each sender, in
	// either order (two senders' signals are not ordered).
	want := map[string]bool{dsend.Name: true, FormatAddress(nsend.Address()): true}
	nativeGot, dbusGot := map[string]bool{}, map[string]bool{}
	for range 2 {
		select {
		case n := <-w.C:
			if n.Member != "Sig" {
				t.Errorf("native watcher got %s from %s, want Sig", n.Member, FormatAddress(n.Sender))
			}
			nativeGot[FormatAddress(n.Sender)] = true
		case <-ctxT(t).Done():
			t.Fatal("native watcher: no signal")
		}
		r := readSkip(t, dw)
		if v, _ := r.BodyString(); r.Member != "Sig" || v != "a" {
			t.Errorf("D-Bus watcher got %s(%q) from %s, want Sig(a)", r.Member, v, r.Sender)
		}
		dbusGot[r.Sender] = true
	}
	if !maps.Equal(nativeGot, want) || !maps.Equal(dbusGot, want) {
		t.Errorf("senders seen: native watcher %v, D-Bus watcher %v; want one from each of %v", nativeGot, dbusGot, want)
	}
	// And nothing else: a final probe signal from each side comes next.
	p, pb := str("a")
	dsend.Send(&dbuspeer.Message{Type: dbuswire.TypeSignal, Path: "/probe", Interface: "com.example.I", Member: "Sig", Signature: p, Body: pb})
	if n := <-w.C; n.Path != "/probe" {
		t.Errorf("native watcher got an extra %s %s", n.Path, n.Member)
	}
	if r := readSkip(t, dw); r.Path != "/probe" {
		t.Errorf("D-Bus watcher got an extra %s %s", r.Path, r.Member)
	}
}
