package bus

import (
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
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
	// A directory every user may enter: tests join as nobody too.
	path := filepath.Join(testutil.SharedDir(t), "bus")
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
		_, copied := f.Field(FieldMonitor) // a monitor's copy of another's frame
		if f.Type == typ && (serial == 0 || f.ReplySerial == serial) && !copied {
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
		r := dialRaw(t, m.Addr())
		if os.Geteuid() != 0 {
			// The kernel itself refuses a claim an unprivileged sender may
			// not make; the master never sees it.
			b := enc(&Frame{Type: TypeHello, Serial: 1, Destination: AddrBus, Body: HelloBody{}.Encode()})
			if _, err := r.c.SendCred(b, &fdpass.Cred{PID: os.Getpid(), UID: 0, GID: 0}); !errors.Is(err, unix.EPERM) {
				t.Fatalf("claiming uid 0 as uid %d: %v, want EPERM", os.Geteuid(), err)
			}
			return
		}
		// Root may claim anyone; the master compares with SO_PEERCRED.
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

// channelPair introduces a to b's address directly and returns the
// channel ends (initiator's, acceptor's) and the channel id.
func channelPair(t *testing.T, a, b *raw) (*fdpass.Conn, *fdpass.Conn, uint64) {
	t.Helper()
	s := a.req(TypeConnect, ConnectBody{Source: a.addr, Destination: b.addr}.Encode())
	_, bfiles := b.expect(TypeIntroduce, 0)
	af, afiles := a.expect(TypeIntroduce, s)
	in, err := ParseIntroduce(af.Body, af.NFDs)
	if err != nil || len(afiles) != 1 || len(bfiles) != 1 {
		t.Fatalf("INTRODUCE: %v, %d and %d fds", err, len(afiles), len(bfiles))
	}
	ac, err := fdpass.NewConn(afiles[0])
	if err != nil {
		t.Fatal(err)
	}
	bc, err := fdpass.NewConn(bfiles[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ac.Close(); bc.Close() })
	return ac, bc, in.Channel
}

func TestMasterRevoke(t *testing.T) {
	testutil.CheckLeaks(t)
	var deny atomic.Bool
	policy := func(cred fdpass.Cred, r Request) Decision {
		if r.Op == OpTalk && deny.Load() {
			return Decision{Reason: "closed for the test"}
		}
		return Decision{Allow: true}
	}
	m := startMaster(t, policy)
	a := join(t, m.Addr(), 0, "a")
	b := join(t, m.Addr(), 0, "b")
	_, _, id := channelPair(t, a, b)

	// The policy changes: Revalidate revokes the channel on both sides.
	deny.Store(true)
	m.Revalidate()
	for _, r := range []*raw{a, b} {
		f, _ := r.expect(TypeRevoke, 0)
		rb, err := ParseRevoke(f.Body)
		if err != nil || rb.Channel != id || rb.Reason != RevokePolicy {
			t.Fatalf("REVOKE %+v %v", rb, err)
		}
	}
	// A new CONNECT is judged afresh, and refused.
	s := a.req(TypeConnect, ConnectBody{Source: a.addr, Destination: b.addr}.Encode())
	if fb := a.failOf(s); fb.Code != CodeDenied || fb.Text != "closed for the test" {
		t.Errorf("CONNECT after the change: %v %q", fb.Code, fb.Text)
	}
	// The revoked channel is forgotten: DISCONNECT finds nothing.
	s = a.req(TypeDisconnect, U64Body(id))
	if fb := a.failOf(s); fb.Code != CodeNotFound {
		t.Errorf("DISCONNECT of a revoked channel: %v", fb.Code)
	}
}

func TestMasterAddresses(t *testing.T) {
	testutil.CheckLeaks(t)
	m := startMaster(t, nil)
	a := join(t, m.Addr(), 0, "a")
	b := join(t, m.Addr(), 0, "b")
	second := a.done(TypeAddAddress, nil).Value
	if second <= b.addr {
		t.Fatalf("ADD_ADDRESS gave %d", second)
	}
	// A routed frame from the second address is delivered with it as source.
	a.send(&Frame{Type: TypeSignal, Serial: 30, Source: second, Destination: b.addr,
		Fields: []Field{{FieldPath, []byte("/x")}, {FieldInterface, []byte("com.example.I")}, {FieldMember, []byte("S")}}})
	f, _ := b.expect(TypeSignal, 0)
	if f.Source != second {
		t.Errorf("source %d, want %d", f.Source, second)
	}
	// A channel bound to the second address is revoked (GONE) when it is
	// removed, and watchers hear EndpointGone REMOVED.
	rules := []Rule{{Kind: RuleMember, Value: MemberEndpointGone}}
	b.done(TypeAddMatch, AddMatchBody{Cookie: 1, Sender: AddrBus, Bloom: MatchBloom(DefaultBloom, rules), Rules: rules}.Encode())
	s := b.req(TypeConnect, ConnectBody{Source: b.addr, Destination: second}.Encode())
	_, afiles := a.expect(TypeIntroduce, 0)
	closeAll(afiles)
	_, files := b.expect(TypeIntroduce, s)
	closeAll(files)
	if s := a.req(TypeRemoveAddress, U64Body(a.addr)); a.failOf(s).Code != CodeInvalid {
		t.Error("removing the primary address was not INVALID")
	}
	a.done(TypeRemoveAddress, U64Body(second))
	r, _ := b.expect(TypeRevoke, 0)
	if rb, _ := ParseRevoke(r.Body); rb.Reason != RevokeGone {
		t.Errorf("REVOKE reason %d, want GONE", rb.Reason)
	}
	g, _ := b.expect(TypeSignal, 0)
	if addr, reason, err := ParseEndpointGone(g.Body); err != nil || addr != second || reason != GoneRemoved {
		t.Errorf("EndpointGone %d %d %v", addr, reason, err)
	}
	a.send(&Frame{Type: TypeSignal, Serial: 31, Source: second, Destination: b.addr,
		Fields: []Field{{FieldPath, []byte("/x")}, {FieldInterface, []byte("com.example.I")}, {FieldMember, []byte("S")}}})
	if fb := a.failOf(31); fb.Code != CodeBadSource {
		t.Errorf("a removed address as source: %v", fb.Code)
	}
}

func TestMasterMulticast(t *testing.T) {
	testutil.CheckLeaks(t)
	m := startMaster(t, nil)
	pub := join(t, m.Addr(), 0, "pub")
	yes := join(t, m.Addr(), 0, "yes")
	no := join(t, m.Addr(), 0, "no")
	add := func(r *raw, cookie uint64, rules ...Rule) {
		r.done(TypeAddMatch, AddMatchBody{Cookie: cookie, Bloom: MatchBloom(DefaultBloom, rules), Rules: rules}.Encode())
	}
	add(yes, 1, Rule{Kind: RuleInterface, Value: "com.example.I"}, Rule{Kind: RuleArg, Index: 0, Value: "red"})
	add(no, 1, Rule{Kind: RuleInterface, Value: "com.example.I"}, Rule{Kind: RuleArg, Index: 0, Value: "blue"})
	sig := Signal{Path: "/a/b", Interface: "com.example.I", Member: "Changed", Args: []Arg{{Index: 0, Kind: ArgString, Value: "red"}}}
	args, _ := EncodeArgs(sig.Args)
	fields := []Field{{FieldPath, []byte(sig.Path)}, {FieldInterface, []byte(sig.Interface)}, {FieldMember, []byte(sig.Member)}, {FieldArgs, args}}
	// A wrong bloom is refused: nobody can hide a signal or spray it.
	bad := make([]byte, DefaultBloomSize)
	for i := range bad {
		bad[i] = 0xff
	}
	pub.send(&Frame{Type: TypeSignal, Serial: 5, Source: pub.addr, Fields: append(slices.Clone(fields), Field{FieldBloom, bad})})
	if fb := pub.failOf(5); fb.Code != CodeBadBloom {
		t.Errorf("all-ones bloom: %v", fb.Code)
	}
	pub.send(&Frame{Type: TypeSignal, Serial: 6, Source: pub.addr, Fields: append(fields, Field{FieldBloom, SignalBloom(DefaultBloom, sig)}), Body: []byte("ok")})
	f, _ := yes.expect(TypeSignal, 0)
	if f.Source != pub.addr || string(f.Body) != "ok" || f.Destination != 0 {
		t.Errorf("delivered: source %d dest %d body %q", f.Source, f.Destination, f.Body)
	}
	if _, ok := f.Field(FieldSenderCred); !ok {
		t.Error("a multicast copy without SENDER_CRED")
	}
	// The master remembers the bloom of a publisher's last properties:
	// the same properties with a wrong bloom, or other properties with
	// the remembered bloom, are still refused.
	pub.send(&Frame{Type: TypeSignal, Serial: 7, Source: pub.addr, Fields: append(slices.Clone(fields), Field{FieldBloom, bad})})
	if fb := pub.failOf(7); fb.Code != CodeBadBloom {
		t.Errorf("all-ones bloom after a good one: %v", fb.Code)
	}
	blue := Signal{Path: sig.Path, Interface: sig.Interface, Member: sig.Member, Args: []Arg{{Index: 0, Kind: ArgString, Value: "blue"}}}
	blueArgs, _ := EncodeArgs(blue.Args)
	pub.send(&Frame{Type: TypeSignal, Serial: 8, Source: pub.addr, Fields: []Field{{FieldPath, []byte(sig.Path)},
		{FieldInterface, []byte(sig.Interface)}, {FieldMember, []byte(sig.Member)}, {FieldArgs, blueArgs},
		{FieldBloom, SignalBloom(DefaultBloom, sig)}}})
	if fb := pub.failOf(8); fb.Code != CodeBadBloom {
		t.Errorf("arg0 blue with red's bloom: %v", fb.Code)
	}
	// "no" must not have it: a LIST round trip shows nothing came before.
	s := no.req(TypeResolve, ResolveBody{Address: pub.addr}.Encode())
	if g, _ := no.read(); g.Type != TypeIdentity || g.ReplySerial != s {
		t.Errorf("the non-matching endpoint got %v first", g.Type)
	}
}

// An endpoint that never reads fills only its own queue: callers get
// QUEUE_FULL, others are served.
func TestMasterStuckReceiver(t *testing.T) {
	testutil.CheckLeaks(t)
	m := startMaster(t, nil)
	a := join(t, m.Addr(), 0, "sender")
	stuck := join(t, m.Addr(), 0, "stuck")
	other := join(t, m.Addr(), 0, "other")
	body := make([]byte, 60000)
	full := false
	for i := uint64(1); i < 2000 && !full; i++ {
		a.send(&Frame{Type: TypeSignal, Serial: 1000 + i, Source: a.addr, Destination: stuck.addr,
			Fields: []Field{{FieldPath, []byte("/x")}, {FieldInterface, []byte("com.example.I")}, {FieldMember, []byte("S")}}, Body: body})
		// Each signal is either queued silently or refused with FAIL; look
		// for FAILs without blocking: ask the master for a round trip.
		s := a.req(TypeResolve, ResolveBody{Address: a.addr}.Encode())
		for {
			f, _ := a.read()
			if f.Type == TypeFail {
				fb, _ := ParseFail(f.Body)
				if fb.Code != CodeQueueFull {
					t.Fatalf("FAIL %v %q", fb.Code, fb.Text)
				}
				full = true
			}
			if f.ReplySerial == s {
				break
			}
		}
	}
	if !full {
		t.Fatal("2000 × 60 KB to an endpoint that never reads were all accepted")
	}
	// That was the sender's share; another sender still has its own.
	other.send(&Frame{Type: TypeSignal, Serial: 9, Source: other.addr, Destination: stuck.addr,
		Fields: []Field{{FieldPath, []byte("/x")}, {FieldInterface, []byte("com.example.I")}, {FieldMember, []byte("S")}}})
	s := other.req(TypeResolve, ResolveBody{Address: other.addr}.Encode())
	if f, _ := other.read(); f.Type != TypeIdentity || f.ReplySerial != s {
		fb, _ := ParseFail(f.Body)
		t.Fatalf("another sender to the stuck endpoint: %v %v %q", f.Type, fb.Code, fb.Text)
	}
	// Others are still served, both ways.
	other.send(&Frame{Type: TypeSignal, Serial: 1, Source: other.addr, Destination: a.addr,
		Fields: []Field{{FieldPath, []byte("/x")}, {FieldInterface, []byte("com.example.I")}, {FieldMember, []byte("S")}}})
	if f, _ := a.expect(TypeSignal, 0); f.Source != other.addr {
		t.Errorf("signal from %d", f.Source)
	}
}

func TestMasterRefusesFDs(t *testing.T) {
	testutil.CheckLeaks(t)
	m := startMaster(t, nil)
	a := join(t, m.Addr(), HelloAcceptFDs, "a")
	b := join(t, m.Addr(), 0, "takes no fds")
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	a.send(&Frame{Type: TypeCall, Serial: 7, Source: a.addr, Destination: b.addr, Fields: []Field{{FieldMember, []byte("M")}}}, pw)
	if fb := a.failOf(7); fb.Code != CodeFdsRefused {
		t.Errorf("fd to an endpoint that takes none: %v", fb.Code)
	}
	// An fd on a control frame is MALFORMED and fatal; the fd is closed.
	a.serial++
	a.send(&Frame{Type: TypeList, Serial: a.serial, Source: a.addr, Destination: AddrBus}, pw)
	if fb := a.failOf(a.serial); fb.Code != CodeMalformed {
		t.Errorf("fd on LIST: %v", fb.Code)
	}
	a.eof()
}

// The master out of fds (EMFILE) while a frame with fds arrives: the
// kernel closes what did not fit, the sender gets FAIL FD_LIMIT, and the
// connection and the bus go on.
func TestMasterFDShortage(t *testing.T) {
	testutil.CheckLeaks(t)
	m := startMaster(t, nil)
	a := join(t, m.Addr(), HelloAcceptFDs, "a")
	b := join(t, m.Addr(), HelloAcceptFDs, "b")
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()

	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	// No fd free in this process (the master's) from here on: the limit
	// bounds fd numbers, so it goes at the lowest free one.
	tight := old
	open := testutil.OpenFDs()
	for tight.Cur = 0; ; tight.Cur++ {
		if _, used := open[int(tight.Cur)]; !used {
			break
		}
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &tight); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
				t.Fatal(err)
			}
		}
	}
	defer restore()
	a.send(&Frame{Type: TypeSignal, Serial: 77, Source: a.addr, Destination: b.addr,
		Fields: []Field{{FieldPath, []byte("/x")}, {FieldInterface, []byte("com.example.I")}, {FieldMember, []byte("S")}}}, pw)
	fb := a.failOf(0)
	restore()
	if fb.Code != CodeFDLimit || fb.Errno != uint32(unix.EMFILE) {
		t.Fatalf("FAIL %v errno %d %q, want FD_LIMIT EMFILE", fb.Code, fb.Errno, fb.Text)
	}
	// Same connection, same bus: the next frame with an fd goes through.
	a.send(&Frame{Type: TypeSignal, Serial: 78, Source: a.addr, Destination: b.addr,
		Fields: []Field{{FieldPath, []byte("/x")}, {FieldInterface, []byte("com.example.I")}, {FieldMember, []byte("S")}}}, pw)
	f, files := b.expect(TypeSignal, 0)
	if f.Serial != 78 || len(files) != 1 {
		t.Fatalf("after the shortage: serial %d with %d fds", f.Serial, len(files))
	}
	closeAll(files)
}

func TestMasterRefusals(t *testing.T) {
	testutil.CheckLeaks(t)
	policy := WithOwnRules(func(cred fdpass.Cred, r Request) Decision {
		if r.Op == OpJoin && cred.GID == 4242 {
			return Decision{Reason: "gid 4242 stays off this bus"}
		}
		return DefaultPolicy(0)(cred, r)
	}, OwnRule{Prefix: "com.example.root", UIDs: []int{0}})
	m := startMaster(t, policy)

	t.Run("oversized frame", func(t *testing.T) {
		r := join(t, m.Addr(), 0, "big")
		big := enc(&Frame{Type: TypeSignal, Serial: 3, Source: r.addr, Destination: r.addr,
			Fields: []Field{{FieldPath, []byte("/x")}, {FieldInterface, []byte("a.b")}, {FieldMember, []byte("S")}},
			Body:   make([]byte, DefaultMaxFrame)})
		if _, err := r.c.Send(big); err != nil {
			t.Fatal(err)
		}
		if fb := r.failOf(0); fb.Code != CodeTooLarge {
			t.Errorf("%d bytes: %v", len(big), fb.Code)
		}
		r.eof()
	})
	t.Run("name squatting", func(t *testing.T) {
		// Only root may own names under com.example.root.
		out := pyJoin(t, m.Addr(), "com.example.root.Service")
		if os.Geteuid() == 0 {
			if !strings.Contains(out, "joined") || !strings.Contains(out, "own 1") {
				t.Errorf("root: %q", out)
			}
			out = pyJoin(t, m.Addr(), "com.example.root.Service", "--reuid=nobody", "--regid=nogroup")
		}
		if !strings.Contains(out, "joined") || !strings.Contains(out, "fail 6 ") {
			t.Errorf("squatting as uid %d: %q, want FAIL 6 (DENIED) with a reason", os.Geteuid(), out)
		}
	})
	t.Run("join refused", func(t *testing.T) {
		testutil.RequireRoot(t) // to connect as gid 4242
		out := pyJoin(t, m.Addr(), "", "--reuid=nobody", "--regid=4242")
		if !strings.Contains(out, "fail 6 gid 4242 stays off this bus") {
			t.Errorf("HELLO from gid 4242: %q", out)
		}
	})
	// Still serving.
	join(t, m.Addr(), 0, "after")
}

// pyJoin joins the bus from a separate Python process (as another user
// with setpriv ARGS when given) and asks for name if not empty; it prints
// "joined ADDR" or "fail CODE TEXT", then "own VALUE" or "fail CODE TEXT".
func pyJoin(t *testing.T, path, name string, setpriv ...string) string {
	t.Helper()
	py := "/usr/bin/python3" // Debian's, which another user may run (a pyenv shim under /root is not)
	if _, err := os.Stat(py); err != nil {
		py = testutil.RequireProgram(t, "python3")
	}
	const script = `
import os, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(sys.argv[1])
def frame(typ, serial, src, body):
    return struct.pack("<BBHIIHHQQQQ", 1, typ, 0, 0, len(body), 0, 0, serial, 0, src, 1) + body
cred = struct.pack("<iII", os.getpid(), os.geteuid(), os.getegid())
s.sendmsg([frame(0x10, 1, 0, struct.pack("<IHH", 0, 0, 0))], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, cred)])
def answer(what):
    b = s.recv(65536)
    if b[1] == 0x22:
        code, errno, n = struct.unpack_from("<HxxIH", b, 48)
        print("fail", code, b[60:60+n].decode())
        sys.exit(0)
    return b
b = answer("hello")
addr = struct.unpack_from("<Q", b, 48)[0]
print("joined", addr)
if len(sys.argv) > 2 and sys.argv[2]:
    n = sys.argv[2].encode()
    s.send(frame(0x14, 2, addr, struct.pack("<QIHH", addr, 4, len(n), 0) + n))
    while True:
        b = answer("name")
        if b[1] == 0x21:
            print("own", struct.unpack_from("<Q", b, 48)[0])
            break
`
	args := []string{py, "-c", script, path, name}
	if len(setpriv) > 0 {
		args = append(append([]string{"setpriv"}, append(setpriv, "--clear-groups")...), args...)
	}
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", args[:3], err, out)
	}
	return string(out)
}

// readMonitor reads copies on a monitor's connection until one with type
// typ from address from arrives.
func readMonitor(t *testing.T, mon *raw, typ Type, from uint64) (*Frame, MonitorInfo) {
	t.Helper()
	r := Rules{Path: PathFromMaster, Joined: true, Monitor: true}
	for {
		mon.c.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, DefaultMaxFrame)
		msg, err := mon.c.Recv(buf, 17)
		if err != nil {
			t.Fatalf("monitor read: %v", err)
		}
		if len(msg.Files) != 0 {
			t.Fatalf("a monitor got %d fds", len(msg.Files))
		}
		f, err := r.Decode(buf[:msg.N], 0)
		if err != nil {
			t.Fatalf("monitor decode: %v", err)
		}
		v, ok := f.Field(FieldMonitor)
		if !ok {
			continue // the monitor's own answers
		}
		mi, err := ParseMonitor(v)
		if err != nil {
			t.Fatal(err)
		}
		if f.Type == typ && mi.From == from {
			return f, mi
		}
	}
}

func TestMasterMonitor(t *testing.T) {
	testutil.CheckLeaks(t)
	m := startMaster(t, nil)
	a := join(t, m.Addr(), HelloAcceptFDs, "a")
	b := join(t, m.Addr(), HelloAcceptFDs, "b")
	_, _, id := channelPair(t, a, b)

	mon := join(t, m.Addr(), 0, "monitor")
	s := mon.req(TypeBecomeMonitor, U32Body(0))
	// Both sides are asked to drain; they disconnect; then DONE.
	for _, r := range []*raw{a, b} {
		f, _ := r.expect(TypeRevoke, 0)
		if rb, _ := ParseRevoke(f.Body); rb.Channel != id || rb.Reason != RevokeMonitor {
			t.Fatalf("REVOKE %+v", rb)
		}
		r.done(TypeDisconnect, U64Body(id))
	}
	f, _ := mon.expect(TypeDone, s)
	if d, _ := ParseDone(f.Body); d.Value != 1 || d.Value2 != 0 {
		t.Errorf("BECOME_MONITOR's DONE %+v, want 1 drained, 0 left", d)
	}
	// New pairs are routed while a monitor is attached.
	s = a.req(TypeConnect, ConnectBody{Source: a.addr, Destination: b.addr}.Encode())
	f, _ = a.expect(TypeIntroduce, s)
	if in, _ := ParseIntroduce(f.Body, f.NFDs); in.Mode != ModeRouted || in.RoutedReason != RoutedMonitor {
		t.Errorf("CONNECT under a monitor: %+v", in)
	}
	// A routed call and its reply, with an fd: the monitor sees both, from
	// and to, with the fd counted and not passed.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	a.send(&Frame{Type: TypeCall, Serial: 60, Source: a.addr, Destination: b.addr, Fields: []Field{{FieldMember, []byte("Look")}}, Body: []byte("q")}, pw)
	pw.Close()
	_, files := b.expect(TypeCall, 0)
	closeAll(files)
	b.send(&Frame{Type: TypeReply, Serial: 61, ReplySerial: 60, Source: b.addr, Destination: a.addr, Body: []byte("r")})
	a.expect(TypeReply, 60)
	cf, ci := readMonitor(t, mon, TypeCall, a.addr)
	if ci.To != b.addr || ci.NFDs != 1 || string(cf.Body) != "q" || cf.NFDs != 0 {
		t.Errorf("monitored CALL: %+v body %q nfds %d", ci, cf.Body, cf.NFDs)
	}
	rf, ri := readMonitor(t, mon, TypeReply, b.addr)
	if ri.To != a.addr || string(rf.Body) != "r" || ri.Flags&MonitorRefused != 0 {
		t.Errorf("monitored REPLY: %+v body %q", ri, rf.Body)
	}
	// A refused frame is marked so.
	a.send(&Frame{Type: TypeCall, Serial: 62, Source: a.addr, Destination: 999, Fields: []Field{{FieldMember, []byte("X")}}})
	a.failOf(62)
	if _, ri := readMonitor(t, mon, TypeCall, a.addr); ri.Flags&MonitorRefused == 0 {
		t.Errorf("the copy of a refused call is not marked refused: %+v", ri)
	}
	// A published bus signal is copied once, with a serial of its own
	// (the decoder refuses serial 0).
	a.done(TypeRequestName, NameBody{Address: a.addr, Name: "com.example.Watched"}.Encode())
	for {
		nf, ni := readMonitor(t, mon, TypeSignal, AddrBus)
		if nf.Text(FieldMember) == MemberNameOwnerChanged {
			if ni.To != AddrNone || nf.Serial == 0 {
				t.Errorf("NameOwnerChanged copy: to %d, serial %d", ni.To, nf.Serial)
			}
			break
		}
	}
	// The monitor's own address is unreachable, and it may only leave.
	s = a.req(TypeConnect, ConnectBody{Source: a.addr, Destination: mon.addr}.Encode())
	if fb := a.failOf(s); fb.Code != CodeUnknownAddress {
		t.Errorf("CONNECT to a monitor: %v", fb.Code)
	}
	mon.req(TypeList, nil)
	mon.eof()
	// With the monitor gone, pairs are direct again.
	testutil.WaitFor(t, "the monitor's departure", func() bool {
		s := a.req(TypeConnect, ConnectBody{Source: a.addr, Destination: b.addr}.Encode())
		f, files := a.expect(TypeIntroduce, s)
		closeAll(files)
		in, _ := ParseIntroduce(f.Body, f.NFDs)
		if in.Mode == ModeDirect {
			_, bf := b.expect(TypeIntroduce, 0)
			closeAll(bf)
			a.done(TypeDisconnect, U64Body(in.Channel))
		}
		return in.Mode == ModeDirect
	})
}

// Sides that do not drain: BECOME_MONITOR answers after drain_timeout,
// counting them.
func TestMasterMonitorDrainTimeout(t *testing.T) {
	testutil.CheckLeaks(t)
	m := startMaster(t, nil)
	a := join(t, m.Addr(), 0, "a")
	b := join(t, m.Addr(), 0, "b")
	channelPair(t, a, b)
	mon := join(t, m.Addr(), 0, "monitor")
	s := mon.req(TypeBecomeMonitor, U32Body(0))
	f, _ := mon.expect(TypeDone, s)
	if d, _ := ParseDone(f.Body); d.Value != 0 || d.Value2 != 1 {
		t.Errorf("DONE %+v, want 0 drained and 1 left", d)
	}
}

// With StallTimeout, an endpoint whose queue stays full is expelled, and
// its departure is published with reason EXPELLED.
func TestMasterStallTimeout(t *testing.T) {
	testutil.CheckLeaks(t)
	path := filepath.Join(testutil.SharedDir(t), "bus")
	m, err := Listen(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	m.StallTimeout = 200 * time.Millisecond
	served := make(chan error, 1)
	go func() { served <- m.Serve() }()
	defer func() { m.Close(); <-served }()

	a := join(t, path, 0, "sender")
	w := join(t, path, 0, "watcher")
	stuck := join(t, path, 0, "stuck")
	rules := []Rule{{Kind: RuleMember, Value: MemberEndpointGone}}
	w.done(TypeAddMatch, AddMatchBody{Cookie: 1, Sender: AddrBus, Bloom: MatchBloom(DefaultBloom, rules), Rules: rules}.Encode())
	body := make([]byte, 60000)
	for i := uint64(1); ; i++ {
		if i > 2000 {
			t.Fatal("the queue never filled")
		}
		a.send(&Frame{Type: TypeSignal, Serial: i, Source: a.addr, Destination: stuck.addr,
			Fields: []Field{{FieldPath, []byte("/x")}, {FieldInterface, []byte("com.example.I")}, {FieldMember, []byte("S")}}, Body: body})
		s := a.req(TypeResolve, ResolveBody{Address: a.addr}.Encode())
		full := false
		for {
			f, _ := a.read()
			if f.Type == TypeFail {
				full = true
			}
			if f.ReplySerial == s && f.Type != TypeFail {
				break
			}
		}
		if full {
			break
		}
	}
	g, _ := w.expect(TypeSignal, 0)
	addr, reason, err := ParseEndpointGone(g.Body)
	if err != nil || addr != stuck.addr || reason != GoneExpelled {
		t.Fatalf("EndpointGone %d reason %d (%v), want %d EXPELLED", addr, reason, err, stuck.addr)
	}
}
