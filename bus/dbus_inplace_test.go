package bus

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/porter-ipc/porter/internal/dbuspeer"
	"github.com/porter-ipc/porter/internal/dbuswire"
	"github.com/porter-ipc/porter/internal/testutil"
)

// byteArray is a body of signature "ay" with n bytes of a pattern that
// differs with seed.
func byteArray(n int, seed byte) []byte {
	b := binary.LittleEndian.AppendUint32(make([]byte, 0, 4+n), uint32(n))
	for i := range n {
		b = append(b, byte(i*31)^seed)
	}
	return b
}

// largeSizes are array lengths around the in-place minimum and large
// ones, ending at every alignment against the read buffer's pages.
var largeSizes = []int{dbusInPlaceMin - 4, dbusInPlaceMin, dbusInPlaceMin + 1, 1<<20 + 3, 1<<20 + 5, 4<<20 + 7, 16 << 20}

// TestDBusLargeInPlace: a large D-Bus message goes to its D-Bus receivers
// out of the buffer the master read it into, its header rewritten in
// front of the body (dbusEncodeFrom). What every receiver gets is what
// was sent: a call and its return; broadcast signals to two D-Bus
// subscribers, the last read by the master together with the small call
// after it, which must not land in the buffer that went out.
// (Not to native watchers: a signal over their max_frame does not reach
// them inline.)
func TestDBusLargeInPlace(t *testing.T) {
	testutil.CheckLeaks(t)
	m, _ := dbusMaster(t)
	path := m.dpath
	echo, err := dbuspeer.StartEcho(path, "org.porter.Big")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := echo.Close(); err != nil {
			t.Error(err)
		}
	}()
	c, err := dbuspeer.Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	call := func(body []byte) *dbuspeer.Message {
		return &dbuspeer.Message{Type: dbuspeer.TypeMethodCall, Destination: "org.porter.Big",
			Path: "/org/porter/Big", Interface: "org.porter.Big", Member: "Echo", Signature: "ay", Body: body}
	}
	for i, n := range largeSizes {
		big := byteArray(n, byte(i))
		r, err := c.Call(call(big))
		if err != nil {
			t.Fatalf("size %d: %v", n, err)
		}
		if r.Signature != "ay" || !bytes.Equal(r.Body, big) {
			t.Fatalf("size %d: the return has %d bytes of signature %q, not the %d sent", n, len(r.Body), r.Signature, len(big))
		}
	}

	// Signals A and B and a small call in one write, the subscribers not
	// reading until the call is answered: A fills their sockets and waits
	// in their queues at the master, so B goes out of its buffer only
	// after the master has read on past it, into the call. A and B stay
	// within the sender's share of a queue (ShareBytes, 1 MiB).
	const iface = "org.porter.Big"
	type sub struct {
		c    *dbuspeer.Conn
		read chan struct{} // read two Ticks now
		got  chan []byte
	}
	var subs []sub
	for range 2 {
		c, err := dbuspeer.Dial(path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.AddMatch("type='signal',interface='" + iface + "'"); err != nil {
			t.Fatal(err)
		}
		sb := sub{c, make(chan struct{}), make(chan []byte, 2)}
		subs = append(subs, sb)
		go func() {
			for range sb.read {
				for range 2 {
					for {
						msg, err := sb.c.Read()
						if err != nil {
							t.Errorf("a D-Bus subscriber: %v", err)
							sb.got <- nil
							return
						}
						if msg.Member == "Tick" {
							sb.got <- msg.Body
							break
						}
					}
				}
			}
		}()
	}
	defer func() {
		for _, sb := range subs {
			close(sb.read)
		}
	}()
	for i, n := range []int{dbusInPlaceMin - 4, dbusInPlaceMin, dbusInPlaceMin + 1, 300<<10 + 3, 600<<10 + 5} {
		sigs := [][]byte{byteArray(320<<10, byte(i)+50), byteArray(n, byte(i)+70)}
		small := byteArray(16, byte(i)+100)
		tick := func(body []byte) *dbuspeer.Message {
			return &dbuspeer.Message{Type: dbuspeer.TypeSignal, Path: "/org/porter/Big", Interface: iface,
				Member: "Tick", Signature: "ay", Body: body}
		}
		serials, err := c.SendAll(tick(sigs[0]), tick(sigs[1]), call(small))
		if err != nil {
			t.Fatal(err)
		}
		r, err := c.Reply(serials[2])
		if err != nil {
			t.Fatalf("size %d: the call after the signals: %v", n, err)
		}
		if !bytes.Equal(r.Body, small) {
			t.Fatalf("size %d: the call after the signals came back as %x, not %x", n, r.Body, small)
		}
		for j, sb := range subs {
			sb.read <- struct{}{}
			for k, sig := range sigs {
				select {
				case b := <-sb.got:
					if !bytes.Equal(b, sig) {
						t.Fatalf("size %d: subscriber %d got %d bytes as signal %d, not the %d sent", n, j, len(b), k, len(sig))
					}
				case <-time.After(30 * time.Second):
					t.Fatalf("size %d: subscriber %d did not get signal %d in 30 s", n, j, k)
				}
			}
		}
	}
}

// TestDBusLargeMonitored: a D-Bus monitor gets its copy of a message
// larger than a native frame (64 KiB), body and all, as dbus-daemon's
// monitors do; it came first, before the small call after it.
func TestDBusLargeMonitored(t *testing.T) {
	testutil.CheckLeaks(t)
	m, _ := dbusMaster(t)
	echo, err := dbuspeer.StartEcho(m.dpath, "org.porter.Big")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := echo.Close(); err != nil {
			t.Error(err)
		}
	}()
	mon, err := dbuspeer.Dial(m.dpath)
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	if _, err := mon.Call(&dbuspeer.Message{Type: dbuspeer.TypeMethodCall, Destination: DriverName, Path: driverPath,
		Interface: "org.freedesktop.DBus.Monitoring", Member: "BecomeMonitor", Signature: "asu", Body: make([]byte, 8)}); err != nil {
		t.Fatal(err)
	}
	c, err := dbuspeer.Dial(m.dpath)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	big, small := byteArray(256<<10, 1), byteArray(16, 2)
	for _, body := range [][]byte{big, small} {
		if _, err := c.Call(&dbuspeer.Message{Type: dbuspeer.TypeMethodCall, Destination: "org.porter.Big",
			Path: "/org/porter/Big", Interface: "org.porter.Big", Member: "Echo", Signature: "ay", Body: body}); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range [][]byte{big, big, small, small} { // each call, then its return
		for {
			msg, err := mon.Read()
			if err != nil {
				t.Fatal(err)
			}
			if msg.Member != "Echo" && (msg.Type != dbuspeer.TypeMethodReturn || msg.Sender != echo.Name()) {
				continue
			}
			if !bytes.Equal(msg.Body, want) {
				t.Fatalf("the monitor's copy of a %d-byte body has %d bytes", len(want), len(msg.Body))
			}
			break
		}
	}
}

// TestDBusLargeSignalNative: a D-Bus signal larger than a native
// endpoint's max_frame is not sent to the native watchers it selects
// (counted lost, as a full queue's), which stay on the bus and get the
// next one: before, the frame reached the endpoint and broke its
// connection.
func TestDBusLargeSignalNative(t *testing.T) {
	testutil.CheckLeaks(t)
	m, _ := dbusMaster(t)
	const iface = "org.porter.Big"
	native := dial(t, m, Options{})
	w, err := native.Watch(ctxT(t), 0, Rule{Kind: RuleInterface, Value: iface})
	if err != nil {
		t.Fatal(err)
	}
	c, err := dbuspeer.Dial(m.dpath)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	small := byteArray(16, 3)
	for _, body := range [][]byte{byteArray(int(native.Welcome().MaxFrame), 4), small} {
		if _, err := c.Send(&dbuspeer.Message{Type: dbuspeer.TypeSignal, Path: "/org/porter/Big", Interface: iface,
			Member: "Tick", Signature: "ay", Body: body}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case n, ok := <-w.C:
		if !ok {
			t.Fatal("the native watcher closed")
		}
		if !bytes.Equal(n.Body, small) {
			t.Fatalf("the native watcher got %d bytes, want the small signal's %d", len(n.Body), len(small))
		}
		n.Close()
	case <-time.After(30 * time.Second):
		t.Fatal("the native watcher got nothing in 30 s")
	}
}

// TestDBusInPlaceBigEndian: a large big-endian message is written in
// place with a big-endian header (the body keeps its byte order) and
// the body's length in that order; the bytes are the buffer's.
func TestDBusInPlaceBigEndian(t *testing.T) {
	data := byteArray(dbusInPlaceMin+5, 9)[4:]
	e := dbuswire.NewEncoder('B')
	e.ByteArray(data)
	in := dbuswire.AppendMessage(nil, &dbuswire.Header{Order: 'B', Type: dbuswire.TypeSignal, Serial: 1000,
		Path: "/org/porter/Big", Interface: "org.porter.Big", Member: "Tick", Signature: "ay"}, e.Bytes())
	buf := append(make([]byte, dbusHeadroom), in...)
	c := &mconn{d: &dconn{place: buf}}
	_, body, err := dbuswire.ParseMessage(in)
	if err != nil {
		t.Fatal(err)
	}
	f := &Frame{Type: TypeSignal, Serial: 1000, Source: 7, Body: buf[len(buf)-len(body):]}
	for code, v := range map[FieldCode]string{FieldPath: "/org/porter/Big", FieldInterface: "org.porter.Big",
		FieldMember: "Tick", FieldSignature: "ay", FieldDBusOrder: "B"} {
		f.SetField(code, []byte(v))
	}
	out, err := dbusEncodeFrom(c, f)
	if err != nil {
		t.Fatal(err)
	}
	if &out[len(out)-1] != &buf[len(buf)-1] || !c.d.gone {
		t.Fatal("the message was copied, not written in place")
	}
	h, gotBody, err := dbuswire.ParseMessage(out)
	if err != nil {
		t.Fatal(err)
	}
	if h.Order != 'B' || h.Sender != ":1.7" || h.Member != "Tick" || !bytes.Equal(gotBody, e.Bytes()) {
		t.Fatalf("got order %q, sender %q, member %q, %d body bytes; want B, :1.7, Tick, %d", h.Order, h.Sender, h.Member, len(gotBody), len(e.Bytes()))
	}
}

// TestDBusLargeBigEndian: a large big-endian message goes out in place
// with its new header big-endian too (the body keeps its byte order), and
// godbus, which reads either order, gets the array sent.
func TestDBusLargeBigEndian(t *testing.T) {
	testutil.CheckLeaks(t)
	m, _ := dbusMaster(t)
	const iface = "org.porter.Big"
	sub, err := dbuspeer.GodbusDial(m.dpath)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := sub.AddMatchSignal(dbus.WithMatchInterface(iface)); err != nil {
		t.Fatal(err)
	}
	got := make(chan *dbus.Signal, 4)
	sub.Signal(got)
	c, err := dbuspeer.Dial(m.dpath)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := byteArray(dbusInPlaceMin+5, 9)[4:]
	e := dbuswire.NewEncoder('B')
	e.ByteArray(data)
	msg := dbuswire.AppendMessage(nil, &dbuswire.Header{Order: 'B', Type: dbuswire.TypeSignal, Serial: 1000,
		Path: "/org/porter/Big", Interface: iface, Member: "Tick", Signature: "ay"}, e.Bytes())
	if err := c.WriteRaw(msg); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case s := <-got:
			if s.Name != iface+".Tick" {
				continue
			}
			if len(s.Body) != 1 {
				t.Fatalf("the signal has %d arguments, want 1", len(s.Body))
			}
			if b, _ := s.Body[0].([]byte); !bytes.Equal(b, data) {
				t.Fatalf("godbus got %d bytes, not the %d sent", len(b), len(data))
			}
			return
		case <-time.After(30 * time.Second):
			t.Fatal("godbus got no signal in 30 s")
		}
	}
}
