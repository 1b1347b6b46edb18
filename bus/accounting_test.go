package bus

import (
	"bytes"
	"strings"
	"testing"

	"github.com/porter-ipc/porter/internal/dbuspeer"
	"github.com/porter-ipc/porter/internal/dbuswire"
	"github.com/porter-ipc/porter/internal/testutil"
)

// limitedMaster serves a bus with a D-Bus front door whose per-user
// limits are max (docs/dbus.md, "Accounting").
func limitedMaster(t *testing.T, max userUse) (*Master, string) {
	t.Helper()
	m := frontMaster(t, func(m *Master) {
		m.st.userMax = max
		m.ErrorLog = quietLog()
	})
	return m, strings.TrimPrefix(m.DBusAddr(), "unix:path=")
}

func lean(t *testing.T, path string) *dbuspeer.Conn {
	t.Helper()
	return dbusDial(t, "unix:path="+path)
}

// TestUserAccounting: matches, reply slots and queued bytes are charged
// to the user across all its connections, and a user over a limit gets
// LimitsExceeded, not silence.
func TestUserAccounting(t *testing.T) {
	testutil.CheckLeaks(t)
	const limits = "org.freedesktop.DBus.Error.LimitsExceeded"
	t.Run("matches", func(t *testing.T) {
		_, path := limitedMaster(t, userUse{bytes: 1 << 30, fds: 64, matches: 3, slots: 64})
		a, b := lean(t, path), lean(t, path)
		for i, c := range []*dbuspeer.Conn{a, a, b} {
			if err := c.AddMatch("type='signal',member='M" + itoa(i) + "'"); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.AddMatch("type='signal',member='M3'"); err == nil || !strings.Contains(err.Error(), limits) {
			t.Errorf("the user's fourth match: %v, want %s", err, limits)
		}
		if _, err := a.Call(&dbuspeer.Message{Type: dbuswire.TypeMethodCall, Destination: DriverName, Path: "/", Interface: DriverName,
			Member: "RemoveMatch", Signature: "s", Body: dbuspeer.StringBody("type='signal',member='M0'")}); err != nil {
			t.Fatal(err)
		}
		if err := b.AddMatch("type='signal',member='M3'"); err != nil {
			t.Errorf("after a RemoveMatch: %v", err)
		}
		a.Close() // its match goes with it
		waitGone(t, b, a.Name)
		if err := b.AddMatch("type='signal',member='M4'"); err != nil {
			t.Errorf("after the other connection left: %v", err)
		}
	})
	t.Run("slots", func(t *testing.T) {
		_, path := limitedMaster(t, userUse{bytes: 1 << 30, fds: 64, matches: 64, slots: 3})
		svc := lean(t, path)
		if err := svc.RequestName("com.example.svc"); err != nil {
			t.Fatal(err)
		}
		a, b := lean(t, path), lean(t, path)
		call := &dbuspeer.Message{Type: dbuswire.TypeMethodCall, Destination: "com.example.svc", Path: "/", Member: "M"}
		for _, c := range []*dbuspeer.Conn{a, b, b} {
			if _, err := c.Send(call); err != nil {
				t.Fatal(err)
			}
		}
		for range 3 {
			readSkip(t, svc) // all three reached the service: their slots are open
		}
		if _, err := a.Call(call); err == nil || !strings.Contains(err.Error(), limits) {
			t.Errorf("the user's fourth pending call: %v, want %s", err, limits)
		}
		// A caller that goes frees its slots: b's two come back.
		b.Close()
		waitGone(t, a, b.Name)
		c := lean(t, path)
		for range 2 {
			if _, err := c.Send(call); err != nil {
				t.Fatal(err)
			}
			readSkip(t, svc)
		}
		if _, err := c.Call(call); err == nil || !strings.Contains(err.Error(), limits) {
			t.Errorf("after b went, the user's fourth pending call: %v, want %s", err, limits)
		}
	})
	t.Run("bytes", func(t *testing.T) {
		_, path := limitedMaster(t, userUse{bytes: 64 << 10, fds: 64, matches: 64, slots: 1 << 20})
		svc := lean(t, path)
		if err := svc.RequestName("com.example.svc"); err != nil {
			t.Fatal(err)
		}
		cli := lean(t, path)
		// The service does not read: the socket fills, then the master's
		// queue for it, up to the user's 64 KiB.
		body := dbuspeer.StringBody(string(bytes.Repeat([]byte{'x'}, 8<<10)))
		for range 200 {
			_, err := cli.Send(&dbuspeer.Message{Type: dbuswire.TypeMethodCall, Destination: "com.example.svc", Path: "/", Member: "M",
				Signature: "s", Body: body})
			if err != nil {
				t.Fatal(err)
			}
		}
		if r := readSkip(t, cli); r.Type != dbuswire.TypeError || r.ErrorName != limits {
			t.Fatalf("a user over its bytes: %+v, want %s", r, limits)
		}
	})
}

// waitGone waits until the bus says name has no owner, asking through c.
func waitGone(t *testing.T, c *dbuspeer.Conn, name string) {
	t.Helper()
	testutil.WaitFor(t, "the master to see "+name+" go", func() bool {
		r, err := c.Call(&dbuspeer.Message{Type: dbuswire.TypeMethodCall, Destination: DriverName, Path: "/", Interface: DriverName,
			Member: "NameHasOwner", Signature: "s", Body: dbuspeer.StringBody(name)})
		if err != nil {
			t.Fatal(err)
		}
		return len(r.Body) == 4 && r.Body[0] == 0 // b false
	})
}
