package porter

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/porter-ipc/porter/broker"
	"github.com/porter-ipc/porter/broker/brokertest"
	"github.com/porter-ipc/porter/creator"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	testutil.RunChildren(map[string]func() int{
		"activation": childActivation,
	})
	testutil.MainWithCommands(m, func(dir string) { brokertest.CreatorPath = filepath.Join(dir, creator.Name) }, "./cmd/porter-creator")
}

// startBroker runs a test broker and makes sure this process's broker
// connections are closed when the test ends.
func startBroker(t *testing.T, cfg broker.Config) *brokertest.Broker {
	t.Helper()
	b := brokertest.Start(t, cfg)
	t.Cleanup(closeClients)
	return b
}

func loopAddr(t *testing.T) string {
	return "127.0.0.1:" + strconv.Itoa(int(testutil.FreePort(t)))
}

// TestListenServesHTTP: the one-line change. A Go HTTP server on a
// porter.Listen listener serves requests; Close gives the socket back.
func TestListenServesHTTP(t *testing.T) {
	testutil.CheckLeaks(t)
	b := startBroker(t, broker.Config{})
	cfg := &Config{Socket: b.Path}
	addr := loopAddr(t)
	l, err := cfg.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if l.Addr().String() != addr {
		t.Fatalf("Addr() = %s, want %s", l.Addr(), addr)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from porter")
	})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	for i := 0; i < 5; i++ {
		resp, err := (&http.Client{Transport: tr}).Get("http://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "hello from porter" {
			t.Fatalf("body %q", body)
		}
	}
	ls := b.List()
	if len(ls.Sockets) != 1 || ls.Sockets[0].Refs != 1 || ls.Sockets[0].Holders[0].App != filepath.Base(os.Args[0]) {
		t.Fatalf("broker listing %+v", ls)
	}
	tr.CloseIdleConnections()
	srv.Close() // closes l, which releases the reference
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("serve: %v", err)
	}
	testutil.WaitFor(t, "the reference to go", func() bool { return len(b.List().Sockets) == 0 })
}

// TestListenPacket: a UDP echo through porter.ListenPacket, with deadlines.
func TestListenPacket(t *testing.T) {
	testutil.CheckLeaks(t)
	b := startBroker(t, broker.Config{})
	cfg := &Config{Socket: b.Path, Share: ShareWithNobody}
	addr := loopAddr(t)
	pc, err := cfg.ListenPacket("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	buf := make([]byte, 64)
	if _, _, err := pc.ReadFrom(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past deadline: %v", err)
	}
	pc.SetReadDeadline(time.Time{})
	go func() {
		n, from, err := pc.ReadFrom(buf)
		if err == nil {
			pc.WriteTo(buf[:n], from)
		}
	}()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("ping"))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("echo: %q %v", buf[:n], err)
	}
	// A second, incompatible request is refused with the broker's reason.
	_, err = cfg.ListenPacket("udp", addr)
	if !errors.Is(err, broker.ErrConflict) || !errors.Is(err, unix.EADDRINUSE) {
		t.Fatalf("share none: want a conflict, got %v", err)
	}
	// Close wakes a blocked read.
	done := make(chan error, 1)
	go func() { _, _, err := pc.ReadFrom(buf); done <- err }()
	ps := pc.(*PacketConn).fd
	testutil.WaitFor(t, "ReadFrom to wait", func() bool { return ps.Waiting() == 1 })
	pc.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read after close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake ReadFrom")
	}
}

// TestShareBetweenListeners: two listeners of the same application get
// one socket; both accept from it.
func TestShareBetweenListeners(t *testing.T) {
	testutil.CheckLeaks(t)
	b := startBroker(t, broker.Config{})
	addr := loopAddr(t)
	cfg := &Config{Socket: b.Path, App: "web"}
	l1, err := cfg.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l1.Close()
	l2, err := cfg.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if ino(t, l1.(*Listener)) != ino(t, l2.(*Listener)) {
		t.Fatal("two shared listeners are different sockets")
	}
	if _, err := (&Config{Socket: b.Path, App: "other"}).Listen("tcp", addr); !errors.Is(err, broker.ErrConflict) {
		t.Fatalf("another application: %v", err)
	}
	for _, l := range []net.Listener{l1, l2} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		a, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		a.Close()
		c.Close()
	}
}

func ino(t *testing.T, l *Listener) uint64 {
	var st unix.Stat_t
	if err := unix.Fstat(l.fd.Sysfd, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func flags(t *testing.T, fd int) int {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fl
}

// TestPrepareAndPickup: a token prepared by one process (here: one broker
// connection) is redeemed by another.
func TestPrepareAndPickup(t *testing.T) {
	testutil.CheckLeaks(t)
	b := startBroker(t, broker.Config{})
	addr := loopAddr(t)
	tok, err := (&Config{Socket: b.Path}).Prepare("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	closeClients() // the preparing side goes away
	f, err := (&Config{Socket: b.Path}).Pickup(tok)
	if err != nil {
		t.Fatal(err)
	}
	l, err := FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Addr().String() != addr {
		t.Fatalf("picked up %s", l.Addr())
	}
	if _, err := (&Config{Socket: b.Path}).Pickup(tok); !errors.Is(err, broker.ErrNoToken) {
		t.Fatalf("second pickup: %v", err)
	}
	if _, err := (&Config{Socket: b.Path}).Pickup("nonsense"); err == nil {
		t.Fatal("bad token accepted")
	}
}

// TestReleasePrepared: a prepared token that nobody will pick up is given
// back with Config.Release; the broker then forgets the socket.
// TestBrokerRestart: after the broker this process talked to goes away and
// a new one serves the same path, Listen and Pickup dial again instead of
// failing on the dead connection.
func TestBrokerRestart(t *testing.T) {
	testutil.CheckLeaks(t)
	old, cur := startBroker(t, broker.Config{}), startBroker(t, broker.Config{})
	dir := testutil.SharedDir(t)
	// Two paths, so two connections of this process: one for each call.
	var cfgs [2]*Config
	for i := range cfgs {
		link := filepath.Join(dir, strconv.Itoa(i))
		if err := os.Symlink(old.Path, link); err != nil {
			t.Fatal(err)
		}
		cfgs[i] = &Config{Socket: link}
		l, err := cfgs[i].Listen("tcp", loopAddr(t))
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := old.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for _, cfg := range cfgs {
		os.Remove(cfg.Socket)
		if err := os.Symlink(cur.Path, cfg.Socket); err != nil {
			t.Fatal(err)
		}
	}

	l, err := cfgs[0].Listen("tcp", loopAddr(t))
	if err != nil {
		t.Fatalf("Listen after the broker restarted: %v", err)
	}
	l.Close()
	tok, err := (&Config{Socket: cur.Path}).Prepare("tcp", loopAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	f, err := cfgs[1].Pickup(tok)
	if err != nil {
		t.Fatalf("Pickup after the broker restarted: %v", err)
	}
	f.Close()
	cfgs[1].Release(tok)
}

func TestReleasePrepared(t *testing.T) {
	testutil.CheckLeaks(t)
	b := startBroker(t, broker.Config{})
	cfg := &Config{Socket: b.Path}
	tok, err := cfg.Prepare("udp", loopAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(b.List().Sockets); n != 1 {
		t.Fatalf("%d sockets cached after Prepare, want 1", n)
	}
	if err := cfg.Release(tok); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the socket to go", func() bool { return len(b.List().Sockets) == 0 })
	if _, err := cfg.Pickup(tok); !errors.Is(err, broker.ErrNoToken) {
		t.Fatalf("pickup after release: %v, want ErrNoToken", err)
	}
	if err := cfg.Release(tok); !errors.Is(err, broker.ErrNoToken) {
		t.Fatalf("second release: %v, want ErrNoToken", err)
	}
	if err := cfg.Release("nonsense"); err == nil {
		t.Fatal("bad token accepted")
	}
}

func TestParseAddr(t *testing.T) {
	for _, tc := range []struct {
		network, address, want string
		proto                  broker.Proto
	}{
		{"tcp", ":80", "0.0.0.0:80", broker.TCP},
		{"tcp4", ":http", "0.0.0.0:80", broker.TCP},
		{"tcp6", ":80", "[::]:80", broker.TCP},
		{"tcp", "localhost:8080", "127.0.0.1:8080", broker.TCP},
		{"tcp6", "localhost:8080", "[::1]:8080", broker.TCP},
		{"udp", "[::1]:53", "[::1]:53", broker.UDP},
		{"udp4", "10.1.2.3:53", "10.1.2.3:53", broker.UDP},
		{"tcp", "example.com:80", "error", broker.TCP},
		{"tcp4", "[::1]:80", "error", broker.TCP},
		{"tcp6", "1.2.3.4:80", "error", broker.TCP},
		{"udp", ":80", "error", broker.TCP},
		{"tcp", "1.2.3.4", "error", broker.TCP},
		{"tcp", ":99999", "error", broker.TCP},
		{"tcp", "[::ffff:127.0.0.1]:80", "127.0.0.1:80", broker.TCP},
		{"udp4", "[::ffff:10.0.0.1]:53", "10.0.0.1:53", broker.UDP},
		{"tcp6", "[::ffff:127.0.0.1]:80", "error", broker.TCP},
	} {
		got, err := parseAddr(tc.network, tc.address, tc.proto)
		s := got.String()
		if err != nil {
			s = "error"
		}
		if s != tc.want {
			t.Errorf("parseAddr(%q, %q) = %s (%v), want %s", tc.network, tc.address, s, err, tc.want)
		}
	}
}

// buildBlockingHolder compiles testdata/blocking_holder.c.
func buildBlockingHolder(t *testing.T) string {
	t.Helper()
	cc := testutil.RequireProgram(t, "cc")
	out := filepath.Join(t.TempDir(), "blocking_holder")
	if b, err := exec.Command(cc, "-O2", "-o", out, "testdata/blocking_holder.c").CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, b)
	}
	return out
}

type cHolder struct {
	cmd   *exec.Cmd
	lines chan string
	done  chan error
}

// startCHolder runs the blocking C holder on f (as its fd 3) and waits
// until it is about to accept.
func startCHolder(t *testing.T, bin string, f *os.File) *cHolder {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.ExtraFiles = []*os.File{f}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &cHolder{cmd: cmd, lines: make(chan string, 16), done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
		close(h.lines)
		h.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		for range h.lines {
		}
	})
	if l := <-h.lines; l != "ready" {
		t.Fatalf("C holder said %q", l)
	}
	return h
}

// serveLetters accepts on l until it closes, answering "G".
func serveLetters(l net.Listener, served *atomic.Int32, wg *sync.WaitGroup) {
	defer wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		served.Add(1)
		c.Write([]byte("G\n"))
		c.Close()
	}
}

// ask connects to addr and returns the line the holder that accepted sent.
func ask(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "error: " + err.Error()
	}
	return strings.TrimSpace(line)
}

// cHolderFailure asks addr (at most asks times) until the C holder c
// has answered once, then waits up to wait for the line it writes when
// it stops, and returns that line ("" when it answered and kept running,
// or never answered). A line it wrote before answering (its first
// accept can already see O_NONBLOCK) counts too.
func cHolderFailure(t *testing.T, c *cHolder, addr string, asks int, wait time.Duration) string {
	t.Helper()
	for i := 0; i < asks; i++ {
		select {
		case l, ok := <-c.lines:
			if !ok {
				t.Fatal("the C holder exited without a word")
			}
			return l
		default:
		}
		if got := ask(t, addr); got != "C" {
			continue
		}
		select {
		case l, ok := <-c.lines:
			if !ok {
				t.Fatal("the C holder exited without a word")
			}
			return l
		case <-time.After(wait):
			return ""
		}
	}
	t.Logf("the C holder took none of %d connections", asks)
	return ""
}

// TestNonblockSharedDescription answers the O_NONBLOCK question. Holders of
// a shared socket share one open file description, and O_NONBLOCK lives
// there. Go's net.FileListener sets it; a C holder that accepts in
// blocking mode then gets EAGAIN whenever the queue is empty and, like
// most such programs, gives up. porter's listener leaves the flag alone,
// so both keep serving.
func TestNonblockSharedDescription(t *testing.T) {
	testutil.CheckLeaks(t)
	bin := buildBlockingHolder(t)
	b := startBroker(t, broker.Config{})

	t.Run("net.FileListener breaks the C holder", func(t *testing.T) {
		addr := loopAddr(t)
		g, err := dial(t, b).Request(broker.Request{Proto: broker.TCP, Addr: mustAddr(addr), Share: broker.ShareAny})
		if err != nil {
			t.Fatal(err)
		}
		defer g.File.Close()
		c := startCHolder(t, bin, g.File)
		gl, err := net.FileListener(g.File) // sets O_NONBLOCK on the shared description
		if err != nil {
			t.Fatal(err)
		}
		defer gl.Close() // on a failure
		if flags(t, testutil.FD(t, g.File))&unix.O_NONBLOCK == 0 {
			t.Fatal("expected net.FileListener to set O_NONBLOCK on the shared description")
		}
		var served atomic.Int32
		var wg sync.WaitGroup
		wg.Add(1)
		go serveLetters(gl, &served, &wg)
		// The C holder's accept already in progress blocks on; once it
		// has served one connection its next accept fails at once (no
		// other connection is queued: we ask one at a time). Which
		// holder takes a connection is the scheduler's choice, so ask
		// until the C holder has answered once, then wait for its line.
		// The bounds only fire when the finding no longer holds.
		failure := cHolderFailure(t, c, addr, 1000, 10*time.Second)
		gl.Close()
		wg.Wait()
		if !strings.Contains(failure, "Resource temporarily unavailable") {
			t.Fatalf("the C holder kept running beside net.FileListener (said %q); the finding no longer holds", failure)
		}
		t.Logf("finding: beside Go's net.FileListener the blocking C holder died with %q", failure)
	})

	t.Run("porter.Listener keeps both working", func(t *testing.T) {
		addr := loopAddr(t)
		g, err := dial(t, b).Request(broker.Request{Proto: broker.TCP, Addr: mustAddr(addr), Share: broker.ShareAny})
		if err != nil {
			t.Fatal(err)
		}
		defer g.File.Close()
		c := startCHolder(t, bin, g.File)
		pl, err := FileListener(g.File)
		if err != nil {
			t.Fatal(err)
		}
		defer pl.Close() // on a failure; Close is idempotent
		var served atomic.Int32
		var wg sync.WaitGroup
		wg.Add(1)
		go serveLetters(pl, &served, &wg)
		// Which holder takes a connection is the scheduler's choice (on
		// a busy machine one may win dozens in a row): ask at least 40
		// times and on until both have answered. The bound only fires
		// when one of them no longer serves.
		counts := map[string]int{}
		n := 0
		for ; n < 40 || (n < 2000 && (counts["C"] == 0 || counts["G"] == 0)); n++ {
			counts[ask(t, addr)]++
		}
		if counts["C"]+counts["G"] != n {
			t.Fatalf("answers %v", counts)
		}
		if counts["C"] == 0 || counts["G"] == 0 {
			t.Fatalf("both holders should take connections: %v", counts)
		}
		if flags(t, testutil.FD(t, g.File))&unix.O_NONBLOCK != 0 {
			t.Fatal("porter's listener set O_NONBLOCK on the shared description")
		}
		select {
		case l := <-c.lines:
			t.Fatalf("the C holder failed: %q", l)
		default:
		}
		// Our Accept may be blocked inside accept(2) (the C holder took
		// the last connection): Close must still end it
		// (TestCloseUnblocksBlockedAccept forces that case).
		pl.Close()
		closed := make(chan struct{})
		go func() { wg.Wait(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Fatal("Close did not end porter's Accept")
		}
		t.Logf("answers: %v", counts)
		// The C holder still serves after we left.
		if got := ask(t, addr); got != "C" {
			t.Fatalf("after porter's listener closed: %q", got)
		}
	})
}

func dial(t *testing.T, b *brokertest.Broker) *broker.Client {
	c, err := broker.Dial(b.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func mustAddr(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// TestCloseUnblocksBlockedAccept forces Accept into a blocking accept(2):
// the socket's description is blocking (as the creator makes it), and
// another holder, blocked in accept(2) itself, takes connections from
// under it. Close must wake it.
func TestCloseUnblocksBlockedAccept(t *testing.T) {
	testutil.CheckLeaks(t)
	b := startBroker(t, broker.Config{})
	addr := loopAddr(t)
	l, err := (&Config{Socket: b.Path}).Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	pl := l.(*Listener)
	if flags(t, pl.fd.Sysfd)&unix.O_NONBLOCK != 0 {
		t.Fatal("the broker's socket should be blocking")
	}
	// The other holder: a blocking accept loop on the same description,
	// as a C daemon would run.
	testutil.BlockingHolder(t, pl.fd.Sysfd, addr)

	accepted := make(chan error, 1)
	go func() {
		for {
			c, err := pl.Accept()
			if err != nil {
				accepted <- err
				return
			}
			c.Close()
		}
	}()
	testutil.WaitBlockedInAccept(t, pl.fd.InAccept, addr)
	l.Close()
	select {
	case err := <-accepted:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not wake an Accept blocked in accept(2)")
	}
	testutil.WaitFor(t, "the reference to go", func() bool { return len(b.List().Sockets) == 0 })
}

// TestActivation: Files and Listeners take over LISTEN_FDS sockets in a
// child whose fds 3 and 4 are a TCP listener and a UDP socket.
func TestActivation(t *testing.T) {
	testutil.CheckLeaks(t)
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	tf, _ := tl.(*net.TCPListener).File()
	defer tf.Close()
	ul, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	uf, _ := ul.(*net.UDPConn).File()
	defer uf.Close()
	br, bw, err := os.Pipe() // stands in for the broker connection
	if err != nil {
		t.Fatal(err)
	}
	defer br.Close()
	defer bw.Close()
	for _, mode := range []string{"files", "listeners", "packetconns"} {
		cmd := testutil.Child(t, "activation", -1, -1, tf, uf, br)
		cmd.Env = append(cmd.Env, "MODE="+mode, "LISTEN_FDS=2", "PORTER_BROKER_FD=5", "LISTEN_FDNAMES=web:dns", "WANT_TCP="+tl.Addr().String(), "WANT_UDP="+ul.LocalAddr().String())
		cmd.Stderr = nil // CombinedOutput collects it
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child (%s): %v\n%s", mode, err, out)
		}
	}
}

// childActivation runs in the child of TestActivation. LISTEN_PID is set
// here because only the process itself knows its pid before it runs (porter
// run sets it and then execs, for the same reason).
func childActivation() int {
	fail := func(f string, a ...any) int { fmt.Fprintf(os.Stderr, f+"\n", a...); return 1 }
	os.Setenv("LISTEN_PID", "1")
	if fs := Files(false); fs != nil {
		return fail("Files accepted another process's LISTEN_PID")
	}
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	switch os.Getenv("MODE") {
	case "files":
		fs := Files(true)
		if len(fs) != 2 || fs[0].Name() != "web" || fs[1].Name() != "dns" {
			return fail("Files = %v", fs)
		}
		for i, f := range fs {
			rc, _ := f.SyscallConn()
			var fl, st int
			rc.Control(func(fd uintptr) {
				fl, _ = unix.FcntlInt(fd, unix.F_GETFD, 0)
				st, _ = unix.FcntlInt(fd, unix.F_GETFL, 0)
			})
			if fl&unix.FD_CLOEXEC == 0 {
				return fail("fd %d not close-on-exec", 3+i)
			}
			if st&unix.O_NONBLOCK != 0 {
				return fail("fd %d made non-blocking", 3+i)
			}
			f.Close()
		}
		if os.Getenv("LISTEN_FDS")+os.Getenv("LISTEN_PID")+os.Getenv("LISTEN_FDNAMES")+os.Getenv("PORTER_BROKER_FD") != "" {
			return fail("Files(true) did not unset the variables")
		}
		// The broker connection: still open, not inherited.
		if fl, err := unix.FcntlInt(5, unix.F_GETFD, 0); err != nil || fl&unix.FD_CLOEXEC == 0 {
			return fail("PORTER_BROKER_FD 5: flags %#x %v, want open and close-on-exec", fl, err)
		}
	case "listeners":
		ls, err := Listeners()
		if err != nil || len(ls) != 2 || ls[0] == nil || ls[1] != nil {
			return fail("Listeners = %v, %v", ls, err)
		}
		defer ls[0].Close()
		if ls[0].Addr().String() != os.Getenv("WANT_TCP") {
			return fail("listener on %s", ls[0].Addr())
		}
		c, err := net.Dial("tcp", os.Getenv("WANT_TCP"))
		if err != nil {
			return fail("dial: %v", err)
		}
		c.Close()
		a, err := ls[0].Accept()
		if err != nil {
			return fail("accept: %v", err)
		}
		a.Close()
	case "packetconns":
		ps, err := PacketConns()
		if err != nil || len(ps) != 2 || ps[0] != nil || ps[1] == nil {
			return fail("PacketConns = %v, %v", ps, err)
		}
		defer ps[1].Close()
		if ps[1].LocalAddr().String() != os.Getenv("WANT_UDP") {
			return fail("packet conn on %s", ps[1].LocalAddr())
		}
	}
	return 0
}
