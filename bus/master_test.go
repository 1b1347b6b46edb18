package bus

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/porter-ipc/porter/fdpass"
	"github.com/porter-ipc/porter/internal/testutil"
)

// These tests speak the protocol byte for byte from docs/protocol-bus.md
// against a real master, with raw SEQPACKET sockets: they check the
// master, not the Go endpoint library.

// startMaster serves a bus in a temporary directory until the test ends.
func startMaster(t *testing.T, policy Policy) *Master {
	t.Helper()
	path := filepath.Join(t.TempDir(), "bus")
	m, err := Listen(path, policy)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- m.Serve() }()
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the socket is still at %s after Close (%v)", path, err)
		}
	})
	return m
}

// raw is a client that speaks frames by hand.
type raw struct {
	t      *testing.T
	c      *fdpass.Conn
	addr   uint64
	serial uint64
	w      WelcomeBody
}

func dialRaw(t *testing.T, path string) *raw {
	t.Helper()
	uc, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := fdpass.NewConn(uc)
	if err != nil {
		t.Fatal(err)
	}
	r := &raw{t: t, c: c}
	t.Cleanup(func() { c.Close() })
	return r
}

// join sends HELLO with the process's own credentials and reads WELCOME.
func join(t *testing.T, path string, flags uint32, label string) *raw {
	t.Helper()
	r := dialRaw(t, path)
	r.hello(&fdpass.Cred{PID: os.Getpid(), UID: os.Geteuid(), GID: os.Getegid()}, flags, label)
	f, _ := r.read()
	if f.Type != TypeWelcome {
		t.Fatalf("answer to HELLO: %v %q", f.Type, f.Body)
	}
	w, err := ParseWelcome(f.Body)
	if err != nil {
		t.Fatal(err)
	}
	r.w, r.addr = w, w.Address
	return r
}

func (r *raw) hello(cred *fdpass.Cred, flags uint32, label string) {
	r.t.Helper()
	r.serial++
	b, err := (&Frame{Type: TypeHello, Serial: r.serial, Destination: AddrBus, Body: HelloBody{Flags: flags, Label: label}.Encode()}).MarshalBinary()
	if err != nil {
		r.t.Fatal(err)
	}
	if cred == nil {
		_, err = r.c.Send(b)
	} else {
		_, err = r.c.SendCred(b, cred)
	}
	if err != nil {
		r.t.Fatal(err)
	}
}

// req sends a control request and returns its serial.
func (r *raw) req(t Type, body []byte) uint64 {
	r.t.Helper()
	r.serial++
	r.send(&Frame{Type: t, Serial: r.serial, Source: r.addr, Destination: AddrBus, Body: body})
	return r.serial
}

func (r *raw) send(f *Frame, files ...*os.File) {
	r.t.Helper()
	sendOn(r.t, r.c, f, files...)
}

func sendOn(t *testing.T, c *fdpass.Conn, f *Frame, files ...*os.File) {
	t.Helper()
	f.NFDs = uint16(len(files))
	b, err := f.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send(b, files...); err != nil {
		t.Fatal(err)
	}
}

// read reads one frame from the master, failing the test after 10 s.
func (r *raw) read() (*Frame, []*os.File) {
	r.t.Helper()
	return readOn(r.t, r.c)
}

func readOn(t *testing.T, c *fdpass.Conn) (*Frame, []*os.File) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, DefaultMaxFrame)
	msg, err := c.Recv(buf, 17)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	f, err := Decode(buf[:msg.N])
	if err != nil {
		msg.Close()
		t.Fatalf("decode: %v", err)
	}
	return f, msg.Files
}

// expect reads until a frame of type typ answering serial arrives (bus
// signals in between are returned too, in order).
func (r *raw) expect(typ Type, serial uint64) (*Frame, []*os.File) {
	r.t.Helper()
	for {
		f, files := r.read()
		if f.Type == typ && (serial == 0 || f.ReplySerial == serial) {
			return f, files
		}
		for _, x := range files {
			x.Close()
		}
		if f.Type == TypeFail {
			fb, _ := ParseFail(f.Body)
			r.t.Fatalf("expected %v for serial %d, got FAIL %v (serial %d): %s", typ, serial, fb.Code, f.ReplySerial, fb.Text)
		}
	}
}

func (r *raw) done(t Type, body []byte) DoneBody {
	r.t.Helper()
	s := r.req(t, body)
	f, _ := r.expect(TypeDone, s)
	d, err := ParseDone(f.Body)
	if err != nil {
		r.t.Fatal(err)
	}
	return d
}

// failOf reads until a FAIL arrives and returns it.
func (r *raw) failOf(serial uint64) FailBody {
	r.t.Helper()
	for {
		f, files := r.read()
		for _, x := range files {
			x.Close()
		}
		if f.Type == TypeFail && (serial == 0 || f.ReplySerial == serial) {
			fb, err := ParseFail(f.Body)
			if err != nil {
				r.t.Fatal(err)
			}
			return fb
		}
	}
}

// eof waits for the master to close the connection.
func (r *raw) eof() {
	r.t.Helper()
	for {
		r.c.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, DefaultMaxFrame)
		msg, err := r.c.Recv(buf, 17)
		if errors.Is(err, io.EOF) || errors.Is(err, unix.ECONNRESET) {
			return
		}
		if err != nil {
			r.t.Fatalf("waiting for EOF: %v", err)
		}
		msg.Close()
	}
}

func TestMasterJoin(t *testing.T) {
	testutil.CheckLeaks(t)
	m := startMaster(t, nil)
	a := join(t, m.Addr(), HelloAcceptFDs, "first")
	b := join(t, m.Addr(), HelloNoDirect, "second")
	if a.addr != 2 || b.addr != 3 {
		t.Errorf("addresses %d, %d; want 2, 3 (assigned from 2 in order)", a.addr, b.addr)
	}
	if a.w.PID != uint32(os.Getpid()) || a.w.UID != uint32(os.Geteuid()) || a.w.GID != uint32(os.Getegid()) {
		t.Errorf("WELCOME credentials %d/%d/%d", a.w.PID, a.w.UID, a.w.GID)
	}
	if a.w.Flags != WelcomeDirect|WelcomeFDs || b.w.Flags != 0 {
		t.Errorf("WELCOME flags %#x, %#x", a.w.Flags, b.w.Flags)
	}
	if a.w.BusID != b.w.BusID || a.w.BusID == ([16]byte{}) {
		t.Errorf("bus ids %x, %x: one random id per bus", a.w.BusID, b.w.BusID)
	}
	// LIST: both, in address order, with labels.
	s := a.req(TypeList, nil)
	var ids []IdentityBody
	for {
		f, _ := a.read()
		if f.Type == TypeListEnd {
			break
		}
		id, err := ParseIdentity(f.Body)
		if err != nil || f.ReplySerial != s {
			t.Fatalf("LIST answer %v serial %d: %v", f.Type, f.ReplySerial, err)
		}
		ids = append(ids, id)
	}
	if len(ids) != 2 || ids[0].Label != "first" || ids[1].Label != "second" || ids[1].Flags != IdentityNoDirect {
		t.Errorf("LIST: %+v", ids)
	}
	// BYE: DONE, then EOF; the address is never reused.
	d := b.done(TypeBye, nil)
	_ = d
	b.eof()
	c := join(t, m.Addr(), 0, "")
	if c.addr != 4 {
		t.Errorf("a join after a BYE got %d, want 4: addresses are never reused", c.addr)
	}
}

func TestMasterRefusesBadHello(t *testing.T) {
	testutil.CheckLeaks(t)
	m := startMaster(t, nil)

	t.Run("request before HELLO", func(t *testing.T) {
		r := dialRaw(t, m.Addr())
		r.addr = 2
		r.req(TypeList, nil)
		if fb := r.failOf(1); fb.Code != CodeNotJoined {
			t.Errorf("FAIL %v %q, want NOT_JOINED", fb.Code, fb.Text)
		}
		r.eof()
	})
	t.Run("garbage", func(t *testing.T) {
		r := dialRaw(t, m.Addr())
		if _, err := r.c.Send([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		if fb := r.failOf(0); fb.Code != CodeMalformed {
			t.Errorf("FAIL %v %q, want MALFORMED", fb.Code, fb.Text)
		}
		r.eof()
	})
	t.Run("forged uid", func(t *testing.T) {
		testutil.RequireRoot(t) // only root may claim another uid: the kernel refuses others
		r := dialRaw(t, m.Addr())
		r.hello(&fdpass.Cred{PID: os.Getpid(), UID: 65534, GID: 65534}, 0, "")
		fb := r.failOf(1)
		if fb.Code != CodeCredMismatch {
			t.Errorf("FAIL %v %q, want CRED_MISMATCH", fb.Code, fb.Text)
		}
		r.eof()
	})
	// The bus still serves.
	join(t, m.Addr(), 0, "after")
}

func TestMasterNames(t *testing.T) {
	testutil.CheckLeaks(t)
	m := startMaster(t, nil)
	a := join(t, m.Addr(), 0, "a")
	b := join(t, m.Addr(), 0, "b")
	w := join(t, m.Addr(), 0, "watcher")
	const name = "com.example.Names"
	rules := []Rule{{Kind: RuleInterface, Value: DBusInterface}, {Kind: RuleMember, Value: MemberNameOwnerChanged}, {Kind: RuleArg, Index: 0, Value: name}}
	if d := w.done(TypeAddMatch, AddMatchBody{Cookie: 7, Sender: AddrBus, Bloom: MatchBloom(DefaultBloom, rules), Rules: rules}.Encode()); d.Value != 7 {
		t.Fatalf("ADD_MATCH: %+v", d)
	}
	noc := func(old, new uint64) {
		t.Helper()
		f, _ := w.expect(TypeSignal, 0)
		o, n, err := ParseNameOwnerChanged(f.Body)
		if err != nil || f.Source != AddrBus || f.Text(FieldMember) != MemberNameOwnerChanged || o != old || n != new {
			t.Fatalf("NameOwnerChanged %v %d→%d (%v), want %d→%d", f.Text(FieldMember), o, n, err, old, new)
		}
	}
	notice := func(r *raw, member string) {
		t.Helper()
		f, _ := r.expect(TypeSignal, 0)
		if f.Source != AddrBus || f.Text(FieldMember) != member {
			t.Fatalf("%s: got %s from %d", member, f.Text(FieldMember), f.Source)
		}
	}
	if d := a.done(TypeRequestName, NameBody{Address: a.addr, Flags: NameAllowReplacement, Name: name}.Encode()); d.Value != NamePrimaryOwner {
		t.Fatalf("first request: %d", d.Value)
	}
	notice(a, MemberNameAcquired)
	noc(0, a.addr)
	if d := b.done(TypeRequestName, NameBody{Address: b.addr, Flags: NameDoNotQueue, Name: name}.Encode()); d.Value != NameExists {
		t.Fatalf("DO_NOT_QUEUE: %d", d.Value)
	}
	if d := b.done(TypeRequestName, NameBody{Address: b.addr, Name: name}.Encode()); d.Value != NameInQueue {
		t.Fatalf("queue: %d", d.Value)
	}
	// Release: the first in the queue gets it.
	if d := a.done(TypeReleaseName, NameBody{Address: a.addr, Name: name}.Encode()); d.Value != NameReleased {
		t.Fatalf("release: %d", d.Value)
	}
	notice(a, MemberNameLost)
	notice(b, MemberNameAcquired)
	noc(a.addr, b.addr)
	// Reserved names and other addresses.
	s := a.req(TypeRequestName, NameBody{Address: a.addr, Name: "org.freedesktop.DBus"}.Encode())
	if fb := a.failOf(s); fb.Code != CodeDenied {
		t.Errorf("reserved name: %v", fb.Code)
	}
	s = a.req(TypeRequestName, NameBody{Address: b.addr, Name: "com.example.Other"}.Encode())
	if fb := a.failOf(s); fb.Code != CodeNotFound {
		t.Errorf("another's address: %v", fb.Code)
	}
	// The owner dies: the name goes, and watchers hear it.
	b.c.Close()
	noc(b.addr, 0)
	s = a.req(TypeResolve, ResolveBody{Name: name}.Encode())
	if fb := a.failOf(s); fb.Code != CodeNameHasNoOwner {
		t.Errorf("RESOLVE after the owner died: %v", fb.Code)
	}
}

// echoOn answers one CALL read from c with a REPLY carrying its body.
func echoOn(t *testing.T, c *fdpass.Conn, own uint64) *Frame {
	t.Helper()
	f, files := readOn(t, c)
	for _, x := range files {
		x.Close()
	}
	if f.Type != TypeCall {
		t.Fatalf("expected a CALL, got %v", f.Type)
	}
	sendOn(t, c, &Frame{Type: TypeReply, Serial: 100 + f.Serial, ReplySerial: f.Serial, Source: own, Destination: f.Source, Body: f.Body})
	return f
}

func TestMasterDirectChannel(t *testing.T) {
	testutil.CheckLeaks(t)
	m := startMaster(t, nil)
	a := join(t, m.Addr(), HelloAcceptFDs, "caller")
	b := join(t, m.Addr(), HelloAcceptFDs, "service")
	b.done(TypeRequestName, NameBody{Address: b.addr, Name: "com.example.Echo"}.Encode())
	b.expect(TypeSignal, 0) // NameAcquired

	s := a.req(TypeConnect, ConnectBody{Source: a.addr, Name: "com.example.Echo"}.Encode())
	bf, bfiles := b.expect(TypeIntroduce, 0)
	bin, err := ParseIntroduce(bf.Body, bf.NFDs)
	if err != nil || len(bfiles) != 1 || bin.Role != RoleAcceptor || bin.Mode != ModeDirect || bin.Peer != a.addr ||
		bin.PID != uint32(os.Getpid()) || bin.UID != uint32(os.Geteuid()) {
		t.Fatalf("acceptor's INTRODUCE %+v (%d fds, %v)", bin, len(bfiles), err)
	}
	af, afiles := a.expect(TypeIntroduce, s)
	ain, err := ParseIntroduce(af.Body, af.NFDs)
	if err != nil || len(afiles) != 1 || ain.Role != RoleInitiator || ain.Channel != bin.Channel ||
		ain.Peer != b.addr || !slices.Equal(ain.Names, []string{"com.example.Echo"}) {
		t.Fatalf("initiator's INTRODUCE %+v (%d fds, %v)", ain, len(afiles), err)
	}
	ac, err := fdpass.NewConn(afiles[0])
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	bc, err := fdpass.NewConn(bfiles[0])
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Close()
	call := &Frame{Type: TypeCall, Serial: 50, Source: a.addr, Destination: b.addr,
		Fields: []Field{{FieldMember, []byte("Echo")}}, Body: []byte("hi")}
	sendOn(t, ac, call)
	echoOn(t, bc, b.addr)
	reply, _ := readOn(t, ac)
	if reply.Type != TypeReply || reply.ReplySerial != 50 || string(reply.Body) != "hi" {
		t.Fatalf("reply %v %d %q", reply.Type, reply.ReplySerial, reply.Body)
	}
	// The service dies: the caller hears EndpointGone unicast (it holds a
	// channel with it), without any match.
	b.c.Close()
	g, _ := a.expect(TypeSignal, 0)
	addr, reason, err := ParseEndpointGone(g.Body)
	if err != nil || g.Text(FieldMember) != MemberEndpointGone || addr != b.addr || reason != GoneDied || g.Destination != a.addr {
		t.Fatalf("EndpointGone %s %d %d %v", g.Text(FieldMember), addr, reason, err)
	}
	// DISCONNECT its side.
	if d := a.done(TypeDisconnect, U64Body(ain.Channel)); d != (DoneBody{}) {
		t.Errorf("DISCONNECT: %+v", d)
	}
}

func TestMasterRouted(t *testing.T) {
	testutil.CheckLeaks(t)
	m := startMaster(t, nil)
	a := join(t, m.Addr(), HelloAcceptFDs, "caller")
	b := join(t, m.Addr(), HelloAcceptFDs, "service")

	s := a.req(TypeConnect, ConnectBody{Source: a.addr, Destination: b.addr, Flags: ConnectRouted}.Encode())
	f, files := a.expect(TypeIntroduce, s)
	in, err := ParseIntroduce(f.Body, f.NFDs)
	if err != nil || len(files) != 0 || in.Mode != ModeRouted || in.RoutedReason != RoutedAsked {
		t.Fatalf("routed INTRODUCE %+v %v", in, err)
	}
	// A call with an fd, routed: the receiver sees SENDER_CRED and the fd.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	a.send(&Frame{Type: TypeCall, Serial: 40, Source: a.addr, Destination: b.addr,
		Fields: []Field{{FieldMember, []byte("Take")}}, Body: []byte("x")}, pw)
	pw.Close()
	got, gfiles := b.expect(TypeCall, 0)
	cv, ok := got.Field(FieldSenderCred)
	sc, err := ParseSenderCred(cv)
	if !ok || err != nil || sc.PID != uint32(os.Getpid()) || len(gfiles) != 1 {
		t.Fatalf("routed CALL: SENDER_CRED %+v %v, %d fds", sc, err, len(gfiles))
	}
	gfiles[0].Close()
	// A reply nobody waits for.
	b.send(&Frame{Type: TypeReply, Serial: 9, ReplySerial: 999, Source: b.addr, Destination: a.addr})
	if fb := b.failOf(9); fb.Code != CodeUnexpectedReply {
		t.Errorf("stray reply: %v", fb.Code)
	}
	// The real reply.
	b.send(&Frame{Type: TypeReply, Serial: 10, ReplySerial: 40, Source: b.addr, Destination: a.addr, Body: []byte("ok")})
	r, _ := a.expect(TypeReply, 40)
	if string(r.Body) != "ok" {
		t.Errorf("reply body %q", r.Body)
	}
	// A second reply to the same call: the slot is gone.
	b.send(&Frame{Type: TypeReply, Serial: 11, ReplySerial: 40, Source: b.addr, Destination: a.addr})
	if fb := b.failOf(11); fb.Code != CodeUnexpectedReply {
		t.Errorf("second reply: %v", fb.Code)
	}
	// A foreign source.
	a.send(&Frame{Type: TypeCall, Serial: 41, Source: b.addr, Destination: b.addr, Fields: []Field{{FieldMember, []byte("X")}}})
	if fb := a.failOf(41); fb.Code != CodeBadSource {
		t.Errorf("foreign source: %v", fb.Code)
	}
	// A call in flight when the callee dies fails at once with PEER_GONE.
	a.send(&Frame{Type: TypeCall, Serial: 42, Source: a.addr, Destination: b.addr, Fields: []Field{{FieldMember, []byte("Hang")}}})
	b.expect(TypeCall, 0)
	b.c.Close()
	if fb := a.failOf(42); fb.Code != CodePeerGone {
		t.Errorf("call to a dead callee: %v %q", fb.Code, fb.Text)
	}
	// To an address that is gone.
	a.send(&Frame{Type: TypeCall, Serial: 43, Source: a.addr, Destination: b.addr, Fields: []Field{{FieldMember, []byte("X")}}})
	if fb := a.failOf(43); fb.Code != CodeUnknownAddress {
		t.Errorf("call to a gone address: %v", fb.Code)
	}
}
