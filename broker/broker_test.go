package broker

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// TestShareMatrix checks every cell of the share-mode matrix: a holder
// with mode H and name "web", then a request with mode R and the same or
// another name, on a real cached socket.
func TestShareMatrix(t *testing.T) {
	testutil.CheckLeaks(t)
	h := startServer(t, Config{})
	modes := []Share{ShareNone, ShareApp, ShareAny}
	for _, proto := range []Proto{TCP, UDP} {
		for _, hm := range modes {
			for _, rm := range modes {
				for _, same := range []bool{true, false} {
					name := fmt.Sprintf("%s/holder=%s/req=%s/same=%v", proto, hm, rm, same)
					t.Run(name, func(t *testing.T) {
						want := hm != ShareNone && rm != ShareNone && (same || (hm == ShareAny && rm == ShareAny))
						addr := loop(freePort(t))
						a, b := h.dial(), h.dial()
						g1, err := a.Request(Request{Proto: proto, Addr: addr, Share: hm, App: "web"})
						if err != nil {
							t.Fatalf("first request (no holder) must succeed: %v", err)
						}
						defer g1.File.Close()
						app := "web"
						if !same {
							app = "dns"
						}
						before := h.srv.List()
						g2, err := b.Request(Request{Proto: proto, Addr: addr, Share: rm, App: app})
						if want {
							if err != nil {
								t.Fatalf("want shared, got %v", err)
							}
							defer g2.File.Close()
							if inode(t, g1.File) != inode(t, g2.File) {
								t.Fatal("shared grants are different sockets")
							}
							if g1.Token == g2.Token {
								t.Fatal("two grants with one token")
							}
							return
						}
						if !errors.Is(err, ErrConflict) || !errors.Is(err, unix.EADDRINUSE) {
							t.Fatalf("want a conflict (EADDRINUSE), got %v", err)
						}
						if !strings.Contains(err.Error(), "share="+hm.String()) || !strings.Contains(err.Error(), `app="web"`) {
							t.Fatalf("conflict error does not name the holders' mode and application: %v", err)
						}
						if after := h.srv.List(); fmt.Sprint(after) != fmt.Sprint(before) {
							t.Fatalf("a refused request changed the cache:\nbefore %v\nafter  %v", before, after)
						}
					})
				}
			}
		}
	}
	// Two "any" holders with different names share; an "app" request
	// meets them only under both their names, so never here.
	t.Run("any+any/app", func(t *testing.T) {
		addr := loop(freePort(t))
		a := h.dial()
		g1, err := a.Request(Request{Proto: TCP, Addr: addr, Share: ShareAny, App: "a"})
		if err != nil {
			t.Fatal(err)
		}
		defer g1.File.Close()
		g2, err := a.Request(Request{Proto: TCP, Addr: addr, Share: ShareAny, App: "b"})
		if err != nil {
			t.Fatalf("two any holders with different names must share: %v", err)
		}
		defer g2.File.Close()
		if _, err := a.Request(Request{Proto: TCP, Addr: addr, Share: ShareApp, App: "a"}); !errors.Is(err, ErrConflict) {
			t.Fatalf("app request beside an any holder of another name: want conflict, got %v", err)
		}
	})
}

// TestInvalidShareMode: an unknown mode is refused even when nobody holds
// the socket, by the client library and by the broker (raw bytes).
func TestInvalidShareMode(t *testing.T) {
	testutil.CheckLeaks(t)
	h := startServer(t, Config{})
	addr := loop(freePort(t))
	c := h.dial()
	if _, err := c.Request(Request{Proto: TCP, Addr: addr, Share: 3}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("client: want ErrInvalid, got %v", err)
	}
	raw := h.raw()
	b, _ := encodeRequest(&Request{Proto: TCP, Addr: addr, Share: ShareAny})
	b[6] = 3
	if m := ask(t, raw, b); m.Type != msgError || m.Err.Code != CodeInvalid {
		t.Fatalf("broker: want an INVALID error, got %+v", m)
	}
	// Not fatal: the connection still works.
	if m := ask(t, raw, header(msgList)); m.Type != msgEnd {
		t.Fatalf("after an invalid request the connection should go on: %+v", m)
	}
	if l := h.srv.List(); len(l.Sockets) != 0 {
		t.Fatalf("an invalid request created a socket: %v", l)
	}
	// With a holder of each valid mode: still INVALID, nothing changes.
	for _, hm := range []Share{ShareNone, ShareApp, ShareAny} {
		addr := loop(freePort(t))
		g, err := h.dial().Request(Request{Proto: TCP, Addr: addr, Share: hm, App: "web"})
		if err != nil {
			t.Fatal(err)
		}
		g.File.Close()
		before := fmt.Sprint(h.srv.List())
		b, _ := encodeRequest(&Request{Proto: TCP, Addr: addr, Share: ShareAny, App: "web"})
		b[6] = 3
		if m := ask(t, raw, b); m.Type != msgError || m.Err.Code != CodeInvalid {
			t.Fatalf("mode 3 beside a %s holder: %+v, want INVALID", hm, m)
		}
		if after := fmt.Sprint(h.srv.List()); after != before {
			t.Fatalf("an invalid request changed the cache:\nbefore %s\nafter  %s", before, after)
		}
	}
}

// TestMappedAddress: an IPv4-mapped IPv6 address is INVALID, so that the
// IPv4 socket it would bind cannot be had under a name the rules and the
// cache do not know.
func TestMappedAddress(t *testing.T) {
	testutil.CheckLeaks(t)
	h := startServer(t, Config{})
	port := freePort(t)
	mapped := netip.AddrPortFrom(netip.MustParseAddr("::ffff:127.0.0.1"), port)
	b, err := encodeRequest(&Request{Proto: UDP, Addr: netip.AddrPortFrom(netip.IPv6Loopback(), port)})
	if err != nil {
		t.Fatal(err)
	}
	a16 := mapped.Addr().As16()
	copy(b[10:26], a16[:]) // the encoder refuses it; the broker must too
	if m := ask(t, h.raw(), b); m.Type != msgError || m.Err.Code != CodeInvalid || !strings.Contains(m.Err.Text, "family 4") {
		t.Fatalf("request for %s: %+v, want INVALID saying to ask with family 4", mapped, m)
	}
	if _, err := h.dial().Request(Request{Proto: UDP, Addr: mapped}); !errors.Is(err, ErrInvalid) {
		t.Errorf("client: %v, want ErrInvalid", err)
	}
	if l := h.srv.List(); len(l.Sockets) != 0 {
		t.Fatalf("a mapped address made a socket: %v", l)
	}
}

// TestReleaseNotYours: a token may be released by its connection, a
// process of its uid, or root; nobody releasing root's token gets
// NOT_YOURS and the reference stays.
func TestReleaseNotYours(t *testing.T) {
	testutil.CheckLeaks(t)
	testutil.RequireRoot(t) // to release as nobody
	uid, gid := testutil.Nobody(t)
	h := startServer(t, Config{})
	g, err := h.dial().Request(Request{Proto: TCP, Addr: loop(freePort(t)), Share: ShareAny, Defer: true})
	if err != nil {
		t.Fatal(err)
	}
	release := func(uid, gid int) string {
		cmd := testutil.Child(t, "release", uid, gid)
		cmd.Env = append(cmd.Env, "BROKER="+h.path, "TOKEN="+g.Token.String())
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("release child: %v %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got := release(uid, gid); !strings.HasPrefix(got, fmt.Sprintf("code %d:", CodeNotYours)) || !strings.Contains(got, "belongs to uid 0") {
		t.Errorf("nobody releasing root's token: %q, want NOT_YOURS naming the owner", got)
	}
	if l := h.srv.List(); len(l.Sockets) != 1 || len(l.Sockets[0].Holders) != 1 {
		t.Fatalf("after a refused release: %+v, want the pending reference kept", l)
	}
	if got := release(-1, -1); got != "released" {
		t.Errorf("root releasing from another connection: %q, want released", got)
	}
	testutil.WaitFor(t, "the socket to go", func() bool { return len(h.srv.List().Sockets) == 0 })
}

// childRelease releases $TOKEN at the broker at $BROKER and prints
// "released" or "code N: " and the error.
func childRelease() int {
	c := childDial()
	if c == nil {
		return 1
	}
	defer c.Close()
	tok, err := ParseToken(os.Getenv("TOKEN"))
	if err != nil {
		fmt.Println("token:", err)
		return 1
	}
	var be *Error
	switch err := c.Release(tok); {
	case err == nil:
		fmt.Println("released")
	case errors.As(err, &be):
		fmt.Printf("code %d: %v\n", be.Code, err)
	default:
		fmt.Println("release:", err)
		return 1
	}
	return 0
}

// TestNewClientRefuses: NewClient owns what it is given, also when it
// refuses it (not a socket; not SOCK_SEQPACKET): nothing leaks.
func TestNewClientRefuses(t *testing.T) {
	testutil.CheckLeaks(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	for _, f := range []*os.File{r, os.NewFile(uintptr(fds[0]), "stream")} {
		if c, err := NewClient(f); err == nil {
			c.Close()
			t.Errorf("NewClient(%s) accepted it", f.Name())
		}
	}
}

// TestReleaseOnClose: a holder's connection closing drops its references;
// the broker closes its copy and the port can be bound again.
func TestReleaseOnClose(t *testing.T) {
	testutil.CheckLeaks(t)
	h := startServer(t, Config{})
	for _, proto := range []Proto{TCP, UDP} {
		addr := loop(freePort(t))
		c, err := Dial(h.path)
		if err != nil {
			t.Fatal(err)
		}
		g, err := c.Request(Request{Proto: proto, Addr: addr, Share: ShareAny})
		if err != nil {
			t.Fatal(err)
		}
		g2, err := c.Request(Request{Proto: proto, Addr: addr, Share: ShareAny})
		if err != nil {
			t.Fatal(err)
		}
		g.File.Close()
		g2.File.Close()
		if l := h.srv.List(); len(l.Sockets) != 1 || l.Sockets[0].Refs != 2 {
			t.Fatalf("want one socket with 2 refs, got %+v", l)
		}
		c.Close()
		waitFor(t, "references to drop", func() bool { return len(h.srv.List().Sockets) == 0 })
		rebind(t, proto, addr)
	}
}

// rebind checks that addr can be bound again (nobody holds it). It waits
// for that: porter-creator closes its own copy of a socket just after
// sending it, in its own time, so a socket the broker has just made and
// dropped may still be open in the creator for a moment.
func rebind(t testing.TB, proto Proto, addr netip.AddrPort) {
	t.Helper()
	var err error
	bind := func() bool {
		var c io.Closer
		if proto == TCP {
			c, err = net.Listen("tcp", addr.String())
		} else {
			c, err = net.ListenPacket("udp", addr.String())
		}
		if err != nil {
			return false
		}
		c.Close()
		return true
	}
	waitFor(t, fmt.Sprintf("%s port %d to be freed", proto, addr.Port()), func() bool {
		return bind() || !errors.Is(err, unix.EADDRINUSE)
	})
	if err != nil {
		t.Fatalf("port not freed: %v", err)
	}
}

// TestTCPListening: TCP sockets come listening (with the backlog), UDP
// bound, both in blocking mode as the creator made them.
func TestTCPListening(t *testing.T) {
	testutil.CheckLeaks(t)
	h := startServer(t, Config{Backlog: 7})
	c := h.dial()
	for _, proto := range []Proto{TCP, UDP} {
		g, err := c.Request(Request{Proto: proto, Addr: loop(0), Share: ShareAny})
		if err != nil {
			t.Fatal(err)
		}
		if g.Addr.Port() == 0 {
			t.Fatal("port 0 grant does not say the real port")
		}
		var acc, fl int
		rc, _ := g.File.SyscallConn()
		rc.Control(func(fd uintptr) {
			acc, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
			fl, _ = unix.FcntlInt(fd, unix.F_GETFL, 0)
		})
		if (acc == 1) != (proto == TCP) {
			t.Errorf("%s: SO_ACCEPTCONN = %d", proto, acc)
		}
		if fl&unix.O_NONBLOCK != 0 {
			t.Errorf("%s: the broker handed out a non-blocking socket", proto)
		}
		if proto == TCP {
			// The listening socket takes connections before anyone accepts.
			conn, err := net.Dial("tcp", g.Addr.String())
			if err != nil {
				t.Fatalf("connect to the handed-out listener: %v", err)
			}
			conn.Close()
		}
		g.File.Close()
		if err := c.Release(g.Token); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDeferredPickup: the two-step flow. One connection gets a token, another
// picks the socket up; a token is picked up once; unclaimed ones expire.
// The TTL runs on a fake clock: no token expires before the test says so.
func TestDeferredPickup(t *testing.T) {
	testutil.CheckLeaks(t)
	const ttl = 300 * time.Millisecond
	clk := newFakeClock()
	h := startServerWith(t, Config{TokenTTL: ttl}, func(s *Server) { s.clock = clk })
	addr := loop(freePort(t))
	sup, child := h.dial(), h.dial()
	g, err := sup.Request(Request{Proto: TCP, Addr: addr, Share: ShareApp, App: "web", Defer: true})
	if err != nil {
		t.Fatal(err)
	}
	if g.File != nil {
		t.Fatal("deferred grant carries an fd")
	}
	l := h.srv.List()
	if len(l.Sockets) != 1 || l.Sockets[0].Holders[0].State != Pending {
		t.Fatalf("want one pending holder, got %+v", l)
	}
	// The pending token counts as a holder for sharing.
	if _, err := child.Request(Request{Proto: TCP, Addr: addr, Share: ShareApp, App: "other"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("pending token must count for sharing: %v", err)
	}
	sup.Close() // the supervisor goes away; the token stays until it expires
	p, err := child.Pickup(g.Token)
	if err != nil {
		t.Fatal(err)
	}
	defer p.File.Close()
	if p.Addr != addr || p.Token != g.Token {
		t.Fatalf("pickup grant %+v", p)
	}
	if _, err := child.Pickup(g.Token); !errors.Is(err, ErrNoToken) {
		t.Fatalf("second pickup: want ErrNoToken, got %v", err)
	}
	if l := h.srv.List(); l.Sockets[0].Holders[0].State != Held || l.Sockets[0].Holders[0].PID != os.Getpid() {
		t.Fatalf("after pickup: %+v", l)
	}

	// An unclaimed token expires and its socket goes.
	addr2 := loop(freePort(t))
	g2, err := child.Request(Request{Proto: UDP, Addr: addr2, Share: ShareAny, Defer: true})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(h.srv.List().Sockets); n != 2 {
		t.Fatalf("%d sockets cached before the TTL ran out, want 2", n)
	}
	clk.Advance(ttl)
	waitFor(t, "the token to expire", func() bool { return len(h.srv.List().Sockets) == 1 })
	if _, err := child.Pickup(g2.Token); !errors.Is(err, ErrNoToken) {
		t.Fatalf("expired token: want ErrNoToken, got %v", err)
	}
	rebind(t, UDP, addr2)
	var bogus Token
	if _, err := child.Pickup(bogus); !errors.Is(err, ErrNoToken) || !errors.Is(err, unix.ENOENT) {
		t.Fatalf("unknown token: %v", err)
	}
}

// TestRelease: by token and by fd; unknown tokens and fds not held.
func TestRelease(t *testing.T) {
	testutil.CheckLeaks(t)
	h := startServer(t, Config{})
	addr := loop(freePort(t))
	c := h.dial()
	g1, err := c.Request(Request{Proto: TCP, Addr: addr, Share: ShareAny})
	if err != nil {
		t.Fatal(err)
	}
	defer g1.File.Close()
	g2, err := c.Request(Request{Proto: TCP, Addr: addr, Share: ShareAny})
	if err != nil {
		t.Fatal(err)
	}
	defer g2.File.Close()
	if err := c.Release(g1.Token); err != nil {
		t.Fatal(err)
	}
	if err := c.Release(g1.Token); !errors.Is(err, ErrNoToken) {
		t.Fatalf("double release: %v", err)
	}
	if n := h.srv.List().Sockets[0].Refs; n != 1 {
		t.Fatalf("refs = %d, want 1", n)
	}
	tok, err := c.ReleaseFile(g2.File)
	if err != nil {
		t.Fatal(err)
	}
	if tok != g2.Token {
		t.Fatalf("release by fd released %s, want %s", tok, g2.Token)
	}
	if _, err := c.ReleaseFile(g2.File); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("release of an fd no longer held: %v", err)
	}
	if n := len(h.srv.List().Sockets); n != 0 {
		t.Fatalf("%d sockets cached after the last release", n)
	}
	// Any fd: a pipe is not a held socket either.
	r, w, _ := os.Pipe()
	defer r.Close()
	defer w.Close()
	if _, err := c.ReleaseFile(r); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("release of a pipe: %v", err)
	}
}

// TestLinger: at zero references the socket stays for the linger time; a
// new request in that time gets the same socket, with its queued
// connection. The linger runs on a fake clock: it ends when the test
// says, not while the test is still using it.
func TestLinger(t *testing.T) {
	testutil.CheckLeaks(t)
	const linger = 500 * time.Millisecond
	clk := newFakeClock()
	h := startServerWith(t, Config{Linger: linger}, func(s *Server) { s.clock = clk })
	addr := loop(freePort(t))
	c := h.dial()
	g, err := c.Request(Request{Proto: TCP, Addr: addr, Share: ShareNone, App: "web"})
	if err != nil {
		t.Fatal(err)
	}
	ino := inode(t, g.File)
	g.File.Close()
	c.Close()
	waitFor(t, "refs to reach 0", func() bool {
		l := h.srv.List()
		return len(l.Sockets) == 1 && l.Sockets[0].Refs == 0 && l.Sockets[0].Linger > 0
	})
	// A client connects while nobody holds the socket.
	cl, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatalf("connect during linger: %v", err)
	}
	defer cl.Close()
	c2 := h.dial()
	g2, err := c2.Request(Request{Proto: TCP, Addr: addr, Share: ShareNone, App: "other"})
	if err != nil {
		t.Fatalf("request during linger: %v", err)
	}
	if inode(t, g2.File) != ino {
		t.Fatal("lingering socket not reused")
	}
	fd, _, err := unix.Accept(testutil.FD(t, g2.File))
	if err != nil {
		t.Fatalf("the queued connection is lost: %v", err)
	}
	unix.Close(fd)
	g2.File.Close()
	c2.Release(g2.Token)
	if l := h.srv.List(); len(l.Sockets) != 1 || l.Sockets[0].Linger != linger.Milliseconds() {
		t.Fatalf("after the last release: %+v, want the socket lingering for %v", l, linger)
	}
	clk.Advance(linger)
	waitFor(t, "linger to end", func() bool { return len(h.srv.List().Sockets) == 0 })
	rebind(t, TCP, addr)
}

// TestQuotas: per-uid limits on references, pending tokens and connections.
func TestQuotas(t *testing.T) {
	testutil.CheckLeaks(t)
	h := startServer(t, Config{MaxSocketsPerUID: 3, MaxTokensPerUID: 1, MaxConnsPerUID: 3})
	c := h.dial()
	addr := loop(freePort(t))
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	g, err := c.Request(Request{Proto: TCP, Addr: addr, Share: ShareAny, Defer: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Request(Request{Proto: TCP, Addr: addr, Share: ShareAny, Defer: true}); !errors.Is(err, ErrQuota) || !errors.Is(err, unix.EDQUOT) {
		t.Fatalf("second pending token: want quota, got %v", err)
	}
	for i := 0; i < 2; i++ {
		g, err := c.Request(Request{Proto: TCP, Addr: addr, Share: ShareAny})
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, g.File)
	}
	if _, err := c.Request(Request{Proto: TCP, Addr: addr, Share: ShareAny}); !errors.Is(err, ErrQuota) {
		t.Fatalf("fourth reference: want quota, got %v", err)
	}
	if err := c.Release(g.Token); err != nil {
		t.Fatal(err)
	}
	g3, err := c.Request(Request{Proto: TCP, Addr: addr, Share: ShareAny})
	if err != nil {
		t.Fatalf("after a release the quota has room: %v", err)
	}
	files = append(files, g3.File)
	// Connections: c is one; two more fit, the fourth is refused.
	h.dial()
	h.dial()
	extra := h.dial()
	if _, err := extra.List(); !errors.Is(err, ErrQuota) {
		t.Fatalf("connection over quota: %v", err)
	}
}

// TestRulesDeny: without a rule, ports below 1024 are refused before the
// creator is asked; with one they are allowed.
func TestRulesDeny(t *testing.T) {
	testutil.CheckLeaks(t)
	var asked atomic.Int32
	cr := CreatorFunc(func(p Proto, a netip.AddrPort) (*os.File, error) {
		asked.Add(1)
		return nil, fmt.Errorf("bind: %w", unix.EACCES)
	})
	h := startServer(t, Config{Creator: cr})
	c := h.dial()
	_, err := c.Request(Request{Proto: TCP, Addr: loop(80), Share: ShareAny})
	if !errors.Is(err, ErrDenied) || !errors.Is(err, unix.EACCES) || asked.Load() != 0 {
		t.Fatalf("port 80 without a rule: %v (creator asked %d times)", err, asked.Load())
	}
	rules, err := ParseRules(strings.NewReader(fmt.Sprintf("allow uid=%d port=80\n", os.Getuid())))
	if err != nil {
		t.Fatal(err)
	}
	h2 := startServer(t, Config{Creator: cr, Rules: rules})
	_, err = h2.dial().Request(Request{Proto: TCP, Addr: loop(80), Share: ShareAny})
	if !errors.Is(err, ErrCreate) || !errors.Is(err, unix.EACCES) || asked.Load() != 1 {
		t.Fatalf("with a rule the creator decides: %v (asked %d)", err, asked.Load())
	}
}

func TestRulesCheck(t *testing.T) {
	rules, err := ParseRules(strings.NewReader(`
# web server may have 80 and 443 on any address
allow uid=33 proto=tcp port=80,443
deny uid=1000 port=8000-8999     # not these
allow gid=53 proto=udp port=53 addr=127.0.0.0/8,::1
allow uid=0
`))
	if err != nil {
		t.Fatal(err)
	}
	a4 := func(s string, port uint16) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr(s), port) }
	for _, tc := range []struct {
		uid, gid int
		p        Proto
		a        netip.AddrPort
		want     bool
	}{
		{33, 33, TCP, a4("0.0.0.0", 80), true},
		{33, 33, UDP, a4("0.0.0.0", 80), false},
		{33, 33, TCP, a4("::", 443), true},
		{34, 33, TCP, a4("0.0.0.0", 80), false},
		{1000, 1000, TCP, a4("0.0.0.0", 8080), false},
		{1000, 1000, TCP, a4("0.0.0.0", 9000), true},
		{1001, 1000, TCP, a4("0.0.0.0", 8080), true},
		{7, 53, UDP, a4("127.0.0.1", 53), true},
		{7, 53, UDP, a4("::1", 53), true},
		{7, 53, UDP, a4("10.0.0.1", 53), false},
		{0, 0, UDP, a4("10.0.0.1", 1), true},
		{7, 7, TCP, a4("0.0.0.0", 0), true},
		{7, 7, TCP, a4("0.0.0.0", 1023), false},
		{7, 7, TCP, a4("0.0.0.0", 1024), true},
	} {
		d := rules.Check(tc.uid, tc.gid, tc.p, tc.a)
		if d.Allow != tc.want {
			t.Errorf("uid %d gid %d %s %s: allow=%v (%s), want %v", tc.uid, tc.gid, tc.p, tc.a, d.Allow, d.Reason, tc.want)
		}
	}
	for _, bad := range []string{"permit uid=1", "allow uid", "allow uid=nosuchuserhere", "allow port=70000",
		"allow port=9-8", "allow proto=sctp", "allow addr=1.2.3", "allow color=red", "allow uid=1 uid=2"} {
		if _, err := ParseRules(strings.NewReader(bad)); err == nil {
			t.Errorf("rules %q: no error", bad)
		}
	}
}

// TestCreatorErrors: the creator's errno comes through to the client.
func TestCreatorErrors(t *testing.T) {
	testutil.CheckLeaks(t)
	h := startServer(t, Config{})
	c := h.dial()
	// EADDRINUSE: someone outside porter holds the port.
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	busy := netip.MustParseAddrPort(l.Addr().String())
	if _, err := c.Request(Request{Proto: TCP, Addr: busy, Share: ShareAny}); !errors.Is(err, ErrCreate) || !errors.Is(err, unix.EADDRINUSE) {
		t.Fatalf("busy port: %v", err)
	} else if !strings.Contains(err.Error(), "EADDRINUSE") || !strings.Contains(err.Error(), busy.String()) {
		t.Fatalf("error does not name the errno and the address: %v", err)
	}
	// EADDRNOTAVAIL: an address this host does not have (TEST-NET-1).
	na := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), freePort(t))
	if _, err := c.Request(Request{Proto: UDP, Addr: na, Share: ShareAny}); !errors.Is(err, unix.EADDRNOTAVAIL) {
		t.Fatalf("foreign address: %v", err)
	}
	if l := h.srv.List(); len(l.Sockets) != 0 {
		t.Fatalf("failed requests left sockets: %+v", l)
	}
}

// TestCreatorGone: after the creator exits, cached sockets are still
// served and new ones get a clear error.
func TestCreatorGone(t *testing.T) {
	testutil.CheckLeaks(t)
	done := make(chan struct{})
	real := newCreator(t)
	var gone atomic.Bool
	cr := CreatorFunc(func(p Proto, a netip.AddrPort) (*os.File, error) {
		if gone.Load() {
			return nil, fmt.Errorf("creator: %w", ErrCreatorGone)
		}
		return real.Create(p, a)
	})
	h := startServer(t, Config{Creator: cr, CreatorDone: done})
	c := h.dial()
	addr := loop(freePort(t))
	g, err := c.Request(Request{Proto: TCP, Addr: addr, Share: ShareAny})
	if err != nil {
		t.Fatal(err)
	}
	g.File.Close()
	close(done)
	waitFor(t, "the broker to notice", h.srv.CreatorGone)
	gone.Store(true)
	g2, err := c.Request(Request{Proto: TCP, Addr: addr, Share: ShareAny})
	if err != nil {
		t.Fatalf("cached socket after the creator left: %v", err)
	}
	g2.File.Close()
	_, err = c.Request(Request{Proto: TCP, Addr: loop(freePort(t)), Share: ShareAny})
	if !errors.Is(err, ErrCreatorGone) || !strings.Contains(err.Error(), "Restart porter up") {
		t.Fatalf("new socket after the creator left: %v", err)
	}
	if l, err := c.List(); err != nil || !l.CreatorGone {
		t.Fatalf("list should say the creator is gone: %+v %v", l, err)
	}
	// The flag is set before the line is written.
	waitFor(t, "a loud log line", func() bool { return strings.Contains(h.log.String(), "SOCKET CREATOR GONE") })
}

// TestMalformed: each malformed message closes that connection with a
// reason; the fds it carried are closed at once (the broker's own fds are
// counted right after, without waiting for the garbage collector),
// whatever the type and the direction it belongs to; the broker serves
// others.
func TestMalformed(t *testing.T) {
	testutil.CheckLeaks(t)
	h := startServer(t, Config{})
	good := h.dial()
	if _, err := good.List(); err != nil { // accepted: its fd counts in every "before"
		t.Fatal(err)
	}
	req, _ := encodeRequest(&Request{Proto: TCP, Addr: loop(1234), Share: ShareAny, App: "x"})
	tok := make([]byte, 20)
	tok[0], tok[1] = Version, msgPickup
	var tk Token
	grant := encodeGrant(&grant{Token: tk, Proto: TCP, Addr: loop(1234)})
	for _, tc := range []struct {
		name string
		msg  []byte
		fd   bool
		code Code
	}{
		{"short header", []byte{1, 'L'}, false, CodeMalformed},
		{"version 2", []byte{2, 'L', 0, 0}, false, CodeVersion},
		{"version 0", []byte{0, 'Q', 0, 0}, false, CodeVersion},
		{"reserved bytes", []byte{1, 'L', 0, 1}, false, CodeMalformed},
		{"unknown type", []byte{1, '?', 0, 0}, false, CodeMalformed},
		{"broker's type", []byte{1, 'G', 0, 0}, false, CodeMalformed},
		{"request cut short", req[:9], false, CodeMalformed},
		{"request name length lies", append(append([]byte{}, req[:len(req)-1]...), 'x', 'y'), false, CodeMalformed},
		{"request bad family", func() []byte { b := append([]byte{}, req...); b[5] = 5; return b }(), false, CodeMalformed},
		{"request flags", func() []byte { b := append([]byte{}, req...); b[7] = 0x80; return b }(), false, CodeMalformed},
		{"pickup short", tok[:19], false, CodeMalformed},
		{"list with body", []byte{1, 'L', 0, 0, 0}, false, CodeMalformed},
		{"fd on a list", header(msgList), true, CodeMalformed},
		{"fd on a request", req, true, CodeMalformed},
		{"oversized", make([]byte, MaxMessage+1), false, CodeTooLarge},
		{"oversized with fd", make([]byte, MaxMessage+100), true, CodeTooLarge},
		{"release-fd without fd", header(msgReleaseFD), false, CodeMalformed},
		// Well-formed messages of the broker's types, with an fd: the
		// direction is wrong as well as the fd.
		{"fd on a grant", grant, true, CodeMalformed},
		{"grant without fd", grant, false, CodeMalformed},
		{"fd on a done", encodeToken(msgDone, tk), true, CodeMalformed},
		{"fd on an error", encodeError(CodeQuota, 0, "x"), true, CodeMalformed},
		{"fd on a socket", encodeSocket(&SocketInfo{Proto: TCP, Addr: loop(1)}, 0), true, CodeMalformed},
		{"fd on a holder", encodeHolder(&HolderInfo{State: Held}), true, CodeMalformed},
		{"fd on an end", encodeEnd(0, false), true, CodeMalformed},
		{"fd on a pickup", tok, true, CodeMalformed},
		{"fd on a release", encodeToken(msgRelease, tk), true, CodeMalformed},
		{"fd on an invalid request", func() []byte { b := append([]byte{}, req...); b[6] = 3; return b }(), true, CodeMalformed},
		{"fd on a bad version", []byte{2, 'F', 0, 0}, true, CodeVersion},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			defer w.Close()
			before := fdSet()
			raw, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: h.path, Net: "unixpacket"})
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			var oob []byte
			if tc.fd {
				oob = unix.UnixRights(testutil.FD(t, r), testutil.FD(t, w))[:unix.CmsgSpace(4)]
				binary.NativeEndian.PutUint64(oob, uint64(unix.CmsgLen(4)))
			}
			if _, _, err := raw.WriteMsgUnix(tc.msg, oob, nil); err != nil {
				t.Fatal(err)
			}
			msgs := readAll(t, raw)
			if len(msgs) != 1 {
				t.Fatalf("want one error reply then EOF, got %d messages", len(msgs))
			}
			m, err := decode(msgs[0])
			if err != nil || m.Type != msgError || m.Err.Code != tc.code || m.Err.Text == "" {
				t.Fatalf("reply %+v %v; want code %v with a reason", m, err, tc.code)
			}
			// The broker closed the connection (EOF) after closing what
			// the message brought: nothing of it is left open now.
			raw.Close()
			if after := fdSet(); after != before {
				t.Fatalf("the broker kept fds open after closing the connection:\n before %s\n after  %s", before, after)
			}
		})
	}
	if _, err := good.List(); err != nil {
		t.Fatalf("the broker stopped serving others: %v", err)
	}
}

// TestVanishingClient: a client that sends a request and disappears
// before the reply leaves no reference and no fd behind.
func TestVanishingClient(t *testing.T) {
	testutil.CheckLeaks(t)
	var created atomic.Int32
	real := newCreator(t)
	h := startServer(t, Config{Creator: CreatorFunc(func(p Proto, a netip.AddrPort) (*os.File, error) {
		created.Add(1)
		return real.Create(p, a)
	})})
	for i := 0; i < 20; i++ {
		raw, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: h.path, Net: "unixpacket"})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := encodeRequest(&Request{Proto: UDP, Addr: loop(freePort(t)), Share: ShareAny})
		raw.Write(b)
		raw.Close()
	}
	waitFor(t, "all requests to be served", func() bool { return created.Load() == 20 })
	waitFor(t, "all references to drop", func() bool {
		h.srv.mu.Lock()
		defer h.srv.mu.Unlock()
		return len(h.srv.conns) == 0 && len(h.srv.cache) == 0
	})
}

// TestList: listing over the wire matches the server's own view, and never
// carries whole tokens.
func TestList(t *testing.T) {
	testutil.CheckLeaks(t)
	h := startServer(t, Config{})
	c := h.dial()
	var toks []Token
	for i := 0; i < 3; i++ {
		addr := loop(freePort(t))
		for j := 0; j <= i; j++ {
			g, err := c.Request(Request{Proto: UDP, Addr: addr, Share: ShareApp, App: "dns", Defer: j == 1})
			if err != nil {
				t.Fatal(err)
			}
			if g.File != nil {
				g.File.Close()
			}
			toks = append(toks, g.Token)
		}
	}
	l, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	if own := h.srv.List(); len(own.Sockets) != len(l.Sockets) {
		t.Fatalf("wire listing has %d sockets, the server %d", len(l.Sockets), len(own.Sockets))
	}
	if len(l.Sockets) != 3 || l.Sockets[0].Refs+l.Sockets[1].Refs+l.Sockets[2].Refs != 6 {
		t.Fatalf("listing %+v", l)
	}
	pending := 0
	for _, s := range l.Sockets {
		for _, hd := range s.Holders {
			if hd.App != "dns" || hd.UID != os.Getuid() || hd.Share != ShareApp {
				t.Fatalf("holder %+v", hd)
			}
			if hd.State == Pending {
				pending++
				if hd.Expires <= 0 {
					t.Fatalf("pending holder without expiry: %+v", hd)
				}
			} else if hd.PID != os.Getpid() {
				t.Fatalf("holder pid %d", hd.PID)
			}
		}
	}
	if pending != 2 {
		t.Fatalf("%d pending, want 2", pending)
	}
	// Each holder shows its token's first 4 bytes, and no more.
	prefixes := map[[4]byte]int{}
	for _, s := range l.Sockets {
		for _, hd := range s.Holders {
			prefixes[hd.TokenPrefix]++
		}
	}
	for _, tok := range toks {
		if prefixes[[4]byte(tok[:4])] != 1 {
			t.Errorf("token %s: listed %d times by prefix, want once", tok.Short(), prefixes[[4]byte(tok[:4])])
		}
	}
	raw := h.raw()
	if _, err := raw.Write(header(msgList)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, MaxMessage)
	for {
		n, err := raw.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		for _, tok := range toks {
			if bytes.Contains(buf[:n], tok[4:]) {
				t.Fatalf("a LIST packet carries more of token %s than its prefix", tok.Short())
			}
		}
		if m, err := decode(buf[:n]); err != nil || m.Type == msgEnd {
			break
		}
	}
}

func TestTokenText(t *testing.T) {
	tok, err := newToken()
	if err != nil {
		t.Fatal(err)
	}
	s := tok.String()
	if len(s) != 32 {
		t.Fatalf("token %q", s)
	}
	back, err := ParseToken(s)
	if err != nil || back != tok {
		t.Fatalf("parse %q: %v %v", s, back, err)
	}
	if sh := tok.Short(); !strings.HasPrefix(s, strings.TrimSuffix(sh, "…")) || len(strings.TrimSuffix(sh, "…")) != 8 {
		t.Fatalf("short %q of %q", sh, s)
	}
	for _, bad := range []string{"", "xyz", s[:30], s + "00"} {
		if _, err := ParseToken(bad); err == nil {
			t.Errorf("ParseToken(%q) accepted", bad)
		}
	}
}

// TestAppNames: the application name is UTF-8 without control
// characters: C0, DEL and C1 (U+0080–U+009F, e.g. NEL U+0085) are
// INVALID from the broker (raw bytes past the client's own check) and
// from the client; other characters are fine.
func TestAppNames(t *testing.T) {
	testutil.CheckLeaks(t)
	h := startServer(t, Config{})
	raw := h.raw()
	c := h.dial()
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"web", true},
		{"dns-äöü", true},
		{"nbsp\u00a0ok", true},
		{"tab\there", false},
		{"nul\x00", false},
		{"del\x7f", false},
		{"nel\u0085", false},
		{"c1first\u0080", false},
		{"c1last\u009f", false},
		{"bad utf-8 \xc2", false},
		{"lone c1 byte \x85", false},
	} {
		addr := loop(freePort(t))
		b, err := encodeRequest(&Request{Proto: UDP, Addr: addr, Share: ShareAny, App: "x"})
		if err != nil {
			t.Fatal(err)
		}
		b = append(b[:len(b)-2], byte(len(tc.name)))
		b = append(b, tc.name...)
		m := ask(t, raw, b)
		if tc.ok {
			if m.Type != msgGrant {
				t.Errorf("name %q: %+v, want a GRANT", tc.name, m)
			}
			continue
		}
		if m.Type != msgError || m.Err.Code != CodeInvalid || !strings.Contains(m.Err.Text, "application name") {
			t.Errorf("name %q: broker answered %+v, want INVALID about the name", tc.name, m)
		}
		g, err := c.Request(Request{Proto: UDP, Addr: addr, Share: ShareAny, App: tc.name})
		if g != nil {
			g.File.Close()
		}
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("name %q: client: %v, want ErrInvalid", tc.name, err)
		}
	}
}

// TestPickupQuota: a PICKUP by another uid whose reference quota is used
// up gets QUOTA, and the token stays pending for a later pickup.
func TestPickupQuota(t *testing.T) {
	testutil.CheckLeaks(t)
	testutil.RequireRoot(t) // to pick up as nobody
	uid, gid := testutil.Nobody(t)
	h := startServer(t, Config{MaxSocketsPerUID: 1})
	g, err := h.dial().Request(Request{Proto: TCP, Addr: loop(freePort(t)), Share: ShareAny, Defer: true})
	if err != nil {
		t.Fatal(err)
	}
	cmd := testutil.Child(t, "pickup", uid, gid)
	cmd.Env = append(cmd.Env, "BROKER="+h.path, "TOKEN="+g.Token.String(), fmt.Sprintf("PORT=%d", freePort(t)))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("pickup child: %v %s", err, out)
	}
	if got := strings.TrimSpace(string(out)); !strings.HasPrefix(got, fmt.Sprintf("code %d:", CodeQuota)) {
		t.Fatalf("pickup by a uid at its quota: %q, want QUOTA", got)
	}
	l := h.srv.List()
	if len(l.Sockets) != 1 || len(l.Sockets[0].Holders) != 1 || l.Sockets[0].Holders[0].State != Pending {
		t.Fatalf("after the refused pickup: %+v, want the token still pending", l)
	}
	p, err := h.dial().Pickup(g.Token)
	if err != nil {
		t.Fatalf("pickup by the requester's uid after the refusal: %v", err)
	}
	p.File.Close()
}

// childPickup holds one socket on $PORT, then picks up $TOKEN at the
// broker at $BROKER, and prints "picked up" or "code N: " and the error.
func childPickup() int {
	c := childDial()
	if c == nil {
		return 1
	}
	defer c.Close()
	port, _ := strconv.Atoi(os.Getenv("PORT"))
	g, err := c.Request(Request{Proto: UDP, Addr: loop(uint16(port)), Share: ShareAny})
	if err != nil {
		fmt.Println("request:", err)
		return 1
	}
	g.File.Close()
	tok, err := ParseToken(os.Getenv("TOKEN"))
	if err != nil {
		fmt.Println("token:", err)
		return 1
	}
	var be *Error
	switch p, err := c.Pickup(tok); {
	case err == nil:
		p.File.Close()
		fmt.Println("picked up")
	case errors.As(err, &be):
		fmt.Printf("code %d: %v\n", be.Code, err)
	default:
		fmt.Println("pickup:", err)
		return 1
	}
	return 0
}

// TestListOrder: LIST sorts sockets by protocol byte (TCP before UDP),
// then address (IPv4 before IPv6, numerically), then port; a socket's
// holders held before pending, then by pid, then by token prefix.
func TestListOrder(t *testing.T) {
	testutil.CheckLeaks(t)
	h := startServer(t, Config{})
	c := h.dial()
	p1, p2 := freePort(t), freePort(t)
	lo, hi := min(p1, p2), max(p1, p2)
	if lo == hi {
		t.Fatal("freePort gave one port twice")
	}
	v6 := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(netip.IPv6Loopback(), port) }
	want := []string{
		fmt.Sprintf("tcp %v", loop(lo)), fmt.Sprintf("tcp %v", loop(hi)), fmt.Sprintf("tcp %v", v6(lo)),
		fmt.Sprintf("udp %v", loop(lo)), fmt.Sprintf("udp %v", v6(lo)), fmt.Sprintf("udp %v", v6(hi)),
	}
	asks := []struct {
		p Proto
		a netip.AddrPort
	}{{UDP, v6(hi)}, {TCP, v6(lo)}, {UDP, loop(lo)}, {TCP, loop(hi)}, {UDP, v6(lo)}, {TCP, loop(lo)}}
	for _, r := range asks {
		for _, deferred := range []bool{true, false, true, false} {
			g, err := c.Request(Request{Proto: r.p, Addr: r.a, Share: ShareAny, Defer: deferred})
			if err != nil {
				t.Fatal(err)
			}
			if g.File != nil {
				g.File.Close()
			}
		}
	}
	l, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range l.Sockets {
		got = append(got, fmt.Sprintf("%s %v", s.Proto, s.Addr))
		if !slices.IsSortedFunc(s.Holders, func(a, b HolderInfo) int {
			if a.State != b.State {
				return int(a.State) - int(b.State)
			}
			if a.PID != b.PID {
				return a.PID - b.PID
			}
			return bytes.Compare(a.TokenPrefix[:], b.TokenPrefix[:])
		}) || len(s.Holders) != 4 || s.Holders[0].State != Held || s.Holders[3].State != Pending {
			t.Errorf("%s %v: holders out of order: %+v", s.Proto, s.Addr, s.Holders)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("LIST order:\n got  %v\n want %v", got, want)
	}
}
