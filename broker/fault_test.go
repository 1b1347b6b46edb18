package broker

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/porter-ipc/porter/creator"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// Faults as part of the suite: the broker out of fds, a creator stopped
// or killed under it, hostile connections beside a good client, and
// stopping while clients are connected. Each is bounded and
// deterministic; the broker runs in this process, so its fds are ours to
// count and its RLIMIT_NOFILE ours to squeeze.

// squeeze lowers this process's RLIMIT_NOFILE to just above its highest
// open fd and fills every free fd below it, so that the next fd anyone in
// the process needs fails with EMFILE: the state of a broker whose idle
// connections use up its limit. relieve (also run when the test ends)
// closes the fillers and restores the limit.
func squeeze(t *testing.T) (relieve func()) {
	t.Helper()
	var old unix.Rlimit
	if err := unix.Prlimit(0, unix.RLIMIT_NOFILE, nil, &old); err != nil {
		t.Fatal(err)
	}
	high := 0
	for fd := range testutil.OpenFDs() {
		high = max(high, fd)
	}
	var fillers []*os.File
	var once sync.Once
	relieve = func() {
		once.Do(func() {
			for _, f := range fillers {
				f.Close()
			}
			if err := unix.Prlimit(0, unix.RLIMIT_NOFILE, &old, nil); err != nil {
				t.Errorf("restoring RLIMIT_NOFILE: %v", err)
			}
		})
	}
	t.Cleanup(relieve)
	lim := unix.Rlimit{Cur: uint64(high + 9), Max: old.Max}
	if err := unix.Prlimit(0, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
		t.Fatal(err)
	}
	for {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == unix.EMFILE {
			return relieve
		}
		if err != nil {
			t.Fatal(err)
		}
		fillers = append(fillers, os.NewFile(uintptr(fd), "filler"))
		if len(fillers) > high+9 {
			t.Fatal("RLIMIT_NOFILE does not bite")
		}
	}
}

// TestFDShortage: the broker out of fds (RLIMIT_NOFILE squeezed, as with
// prlimit --nofile=40:40 porter up and enough idle connections) with the
// real porter-creator. A new socket the broker has no fd to receive, and
// a RELEASE-FD whose fd it cannot take, each get one INTERNAL answer with
// EMFILE; the connection, its reference and the creator all stay, and once
// the pressure goes both work.
func TestFDShortage(t *testing.T) {
	testutil.CheckLeaks(t)
	cr, err := creator.Start(creatorPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cr.Close() })
	h := startServer(t, Config{Creator: FromCreator(cr), CreatorDone: cr.Done()})
	c := h.dial()
	var g *Grant
	var relErr, reqErr error
	for attempt := 1; ; attempt++ {
		var err error
		if g, err = c.Request(Request{Proto: TCP, Addr: loop(0), Share: ShareAny}); err != nil {
			t.Fatal(err)
		}
		relieve := squeeze(t)
		// RELEASE-FD first: were the connection dropped, its fd would be
		// free again for the request.
		_, relErr = c.ReleaseFile(g.File)
		var g2 *Grant
		g2, reqErr = c.Request(Request{Proto: UDP, Addr: loop(0), Share: ShareAny})
		// The premise: no fd was free all along. An *os.File that an
		// earlier test left to the garbage collector may have been
		// closed meanwhile and freed one; then try again.
		full := false
		if fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
			unix.Close(fd)
		} else {
			full = err == unix.EMFILE
		}
		relieve()
		if full {
			break
		}
		t.Logf("attempt %d: an fd was freed under the squeeze; again", attempt)
		if g2 != nil {
			c.ReleaseFile(g2.File)
			g2.File.Close()
		}
		if relErr != nil {
			c.ReleaseFile(g.File)
		}
		g.File.Close()
		if attempt == 5 {
			t.Fatal("an fd was freed under the squeeze five times in a row")
		}
	}
	defer g.File.Close()

	for what, err := range map[string]error{"new socket": reqErr, "RELEASE-FD": relErr} {
		if !errors.Is(err, ErrInternal) || !errors.Is(err, unix.EMFILE) || !strings.Contains(err.Error(), "out of file descriptors") {
			t.Errorf("%s with no fd free in the broker: %v; want INTERNAL with EMFILE saying so", what, err)
		}
	}
	select {
	case <-cr.Done():
		t.Fatal("the creator is gone after the broker ran out of fds")
	default:
	}
	if h.srv.CreatorGone() {
		t.Fatal("the broker thinks its creator is gone")
	}
	// The connection and its reference survived the shortage.
	l, err := c.List()
	if err != nil {
		t.Fatalf("the connection did not survive the shortage: %v", err)
	}
	if len(l.Sockets) != 1 || l.Sockets[0].Refs != 1 || l.Sockets[0].Addr != g.Addr {
		t.Fatalf("after the shortage: %+v, want only %v with its one reference", l, g.Addr)
	}
	tok, err := c.ReleaseFile(g.File)
	if err != nil || tok != g.Token {
		t.Fatalf("RELEASE-FD after the shortage: %v %v", tok, err)
	}
	// The same creator makes the next new socket.
	g2, err := c.Request(Request{Proto: UDP, Addr: loop(0), Share: ShareAny})
	if err != nil {
		t.Fatalf("new socket after the shortage: %v", err)
	}
	g2.File.Close()
	if err := c.Release(g2.Token); err != nil {
		t.Fatal(err)
	}
}

// procState returns the state letter of /proc/PID/stat (R, S, T, Z…).
func procState(t testing.TB, pid int) byte {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		t.Fatalf("/proc/%d/stat: %q", pid, b)
	}
	return b[i+2]
}

// TestCreatorStopped: a creator stopped with SIGSTOP under the broker. A
// request for a new socket fails after the creator's timeout with
// CREATOR_GONE saying so, instead of waiting forever; the creator is
// killed (Done closes) and the broker goes on serving cached sockets and
// refusing new ones at once.
func TestCreatorStopped(t *testing.T) {
	testutil.CheckLeaks(t)
	cr, err := creator.Start(creatorPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cr.Close() })
	const timeout = 300 * time.Millisecond
	cr.SetTimeout(timeout)
	h := startServer(t, Config{Creator: FromCreator(cr), CreatorDone: cr.Done()})
	c := h.dial()
	cached := loop(freePort(t))
	g, err := c.Request(Request{Proto: UDP, Addr: cached, Share: ShareAny})
	if err != nil {
		t.Fatal(err)
	}
	g.File.Close()

	pid := cr.Pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the creator to stop", func() bool { return procState(t, pid) == 'T' })
	res := make(chan error, 1)
	go func() {
		g, err := c.Request(Request{Proto: UDP, Addr: loop(0), Share: ShareAny})
		if g != nil {
			g.File.Close()
		}
		res <- err
	}()
	select {
	case err = <-res:
	case <-time.After(30 * time.Second): // a guard, far above the timeout
		syscall.Kill(pid, syscall.SIGKILL) // let the test end
		t.Fatal("a request for a new socket still waits on the stopped creator")
	}
	if !errors.Is(err, ErrCreatorGone) || !strings.Contains(err.Error(), "did not answer within "+timeout.String()) {
		t.Fatalf("new socket from a stopped creator: %v; want CREATOR_GONE naming the timeout", err)
	}
	<-cr.Done() // the link is broken and the stopped creator killed
	g2, err := c.Request(Request{Proto: UDP, Addr: cached, Share: ShareAny})
	if err != nil {
		t.Fatalf("cached socket after the creator stalled: %v", err)
	}
	g2.File.Close()
	if _, err := c.Request(Request{Proto: TCP, Addr: loop(0), Share: ShareAny}); !errors.Is(err, ErrCreatorGone) {
		t.Fatalf("second new socket: %v, want CREATOR_GONE", err)
	}
	// The flag is set before the line is written: wait for both.
	waitFor(t, "the broker to say loudly that its creator is gone", func() bool {
		return h.srv.CreatorGone() && strings.Contains(h.log.String(), "SOCKET CREATOR GONE")
	})
}

// TestShuttingDown: stopping the broker tells every connection so
// (SHUTTING_DOWN) before closing it: an idle one unprompted, one with a
// request in flight as the answer to that request; a request sent later
// gets an error, not a hang.
func TestShuttingDown(t *testing.T) {
	testutil.CheckLeaks(t)
	real := newCreator(t)
	blocked := loop(freePort(t))
	entered, release := make(chan struct{}), make(chan struct{})
	cr := CreatorFunc(func(p Proto, a netip.AddrPort) (*os.File, error) {
		if a == blocked {
			close(entered)
			<-release
		}
		return real.Create(p, a)
	})
	h := startServer(t, Config{Creator: cr})
	idle := h.raw()
	if m := ask(t, idle, header(msgList)); m.Type != msgEnd {
		t.Fatalf("list: %+v", m)
	}
	busy := h.dial()
	res := make(chan error, 1)
	go func() {
		g, err := busy.Request(Request{Proto: TCP, Addr: blocked, Share: ShareAny})
		if g != nil {
			g.File.Close()
		}
		res <- err
	}()
	<-entered
	closed := make(chan struct{})
	go func() { h.srv.Close(); close(closed) }()

	msgs := readAll(t, idle)
	if len(msgs) != 1 {
		t.Fatalf("idle connection got %d messages before EOF, want one SHUTTING_DOWN", len(msgs))
	}
	if m, err := decode(msgs[0]); err != nil || m.Type != msgError || m.Err.Code != CodeShuttingDown || m.Err.Errno != unix.ESHUTDOWN {
		t.Fatalf("idle connection got %+v %v, want SHUTTING_DOWN (ESHUTDOWN)", m, err)
	}
	close(release)
	if err := <-res; !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("request in flight while stopping: %v, want SHUTTING_DOWN", err)
	}
	<-closed
	if _, err := busy.List(); err == nil {
		t.Fatal("a request after the broker stopped succeeded")
	}
	if l := h.srv.List(); len(l.Sockets) != 0 {
		t.Fatalf("sockets left after Close: %+v", l)
	}
}

// TestHostileWhileServing: hostile connections send garbage, truncated,
// oversized and fd-laden packets while a good client is served. Every
// request of the good client succeeds; afterwards no connection,
// reference, token or fd is left in the broker; the repeated warnings are
// rate-limited, with the count of those left out.
func TestHostileWhileServing(t *testing.T) {
	testutil.CheckLeaks(t)
	h := startServerWith(t, Config{}, func(s *Server) {
		// One window for the whole test: the count is exact.
		s.warns = newWarnLimiter(warnBurst, time.Hour, time.Now)
	})
	good := h.dial()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()

	req, _ := encodeRequest(&Request{Proto: TCP, Addr: loop(1234), Share: ShareAny})
	rng := rand.New(rand.NewPCG(8, 8))
	garbage := func(typ byte) []byte {
		b := make([]byte, 4+rng.IntN(60))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		b[0], b[1], b[2], b[3] = Version, typ, 0, 0
		return b
	}
	type packet struct {
		b   []byte
		fds int // fds attached (r, then w)
	}
	var packets []packet
	for i := 0; i < 10; i++ {
		packets = append(packets,
			packet{garbage("?GEXSHZD"[i%8]), i % 2},
			packet{req[:4+i%len(req[4:])], 0},       // truncated
			packet{req, 1},                          // an fd on a request
			packet{make([]byte, MaxMessage+1+i), 1}, // oversized
			packet{header(msgReleaseFD), 2},         // two fds
			packet{[]byte{byte(i), 'L', 0, 0}, 1},   // bad version or an fd on LIST
		)
	}
	var hostile sync.WaitGroup
	hostileErr := make(chan error, len(packets))
	for worker := 0; worker < 3; worker++ {
		hostile.Add(1)
		go func() {
			defer hostile.Done()
			for i := worker; i < len(packets); i += 3 {
				if err := sendHostile(h.path, packets[i].b, packets[i].fds, r, w); err != nil {
					hostileErr <- fmt.Errorf("packet %d (%x…): %w", i, packets[i].b[:4], err)
				}
			}
		}()
	}
	cached := loop(freePort(t))
	for i := 0; i < 60; i++ {
		g, err := good.Request(Request{Proto: UDP, Addr: cached, Share: ShareAny})
		if err != nil {
			t.Fatalf("good request %d: %v", i, err)
		}
		g.File.Close()
		if i%6 == 0 {
			g0, err := good.Request(Request{Proto: TCP, Addr: loop(0), Share: ShareNone})
			if err != nil {
				t.Fatalf("good port-0 request %d: %v", i, err)
			}
			if _, err := good.ReleaseFile(g0.File); err != nil {
				t.Fatalf("good release-fd %d: %v", i, err)
			}
			g0.File.Close()
		}
		if _, err := good.List(); err != nil {
			t.Fatalf("good list %d: %v", i, err)
		}
		if err := good.Release(g.Token); err != nil {
			t.Fatalf("good release %d: %v", i, err)
		}
	}
	hostile.Wait()
	close(hostileErr)
	for err := range hostileErr {
		t.Error(err)
	}
	waitFor(t, "the hostile connections to go", func() bool {
		h.srv.mu.Lock()
		defer h.srv.mu.Unlock()
		return len(h.srv.conns) == 1
	})
	good.Close()
	waitFor(t, "the good connection to go", func() bool {
		h.srv.mu.Lock()
		defer h.srv.mu.Unlock()
		return len(h.srv.conns) == 0 && len(h.srv.usage) == 0
	})
	h.srv.mu.Lock()
	left := fmt.Sprintf("cache %d, tokens %d", len(h.srv.cache), len(h.srv.tokens))
	h.srv.mu.Unlock()
	if left != "cache 0, tokens 0" {
		t.Fatalf("left in the broker: %s", left)
	}
	h.srv.Close()
	log := h.log.String()
	if n := strings.Count(log, `msg="closing connection"`); n > 3*warnBurst {
		t.Errorf("%d hostile connections wrote %d warnings; want at most %d per kind", len(packets), n, warnBurst)
	}
	if !strings.Contains(log, `msg="repeated warnings were left out" kind="closing connection: malformed message"`) {
		t.Errorf("no summary of the warnings left out:\n%s", log)
	}
}

// sendHostile connects, sends b with nfds of r and w attached, reads the
// one answer (fatal or not) and closes.
func sendHostile(path string, b []byte, nfds int, r, w *os.File) error {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return err
	}
	defer c.Close()
	var oob []byte
	if nfds > 0 {
		fds := []int{fdOf(r), fdOf(w)}[:nfds]
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix(b, oob, nil); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, MaxMessage)
	n, err := c.Read(buf)
	if err != nil {
		return fmt.Errorf("no answer: %w", err)
	}
	if n < 6 || buf[1] != msgError {
		return fmt.Errorf("answer %x, want an ERROR", buf[:n])
	}
	if code := Code(binary.BigEndian.Uint16(buf[4:6])); code != CodeMalformed && code != CodeVersion && code != CodeTooLarge {
		return fmt.Errorf("answer code %v, want a fatal one", code)
	}
	return nil
}

func fdOf(f *os.File) int {
	n := -1
	rc, err := f.SyscallConn()
	if err == nil {
		rc.Control(func(fd uintptr) { n = int(fd) })
	}
	return n
}

// TestWarnLimiter: per kind at most burst lines a window, the rest
// counted and reported once, on the clock given (no wall clock).
func TestWarnLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newWarnLimiter(3, time.Minute, func() time.Time { return now })
	logged, arms := 0, 0
	for i := 0; i < 10; i++ {
		ok, reported, total, arm := l.allow("a")
		if ok {
			logged++
		}
		if arm {
			arms++
		}
		if reported != 0 || total != uint64(i+1) {
			t.Fatalf("occurrence %d: reported %d total %d", i, reported, total)
		}
	}
	if logged != 3 || arms != 1 {
		t.Fatalf("logged %d (want 3), armed %d times (want 1)", logged, arms)
	}
	if ok, _, _, _ := l.allow("b"); !ok {
		t.Fatal("another kind is limited by the first")
	}
	if got := l.flush(false); got != nil {
		t.Fatalf("flush before the window ends: %v", got)
	}
	now = now.Add(time.Minute)
	got := l.flush(false)
	if len(got) != 1 || got["a"] != (warnSummary{Suppressed: 7, Total: 10}) {
		t.Fatalf("flush after the window: %v, want a: 7 left out of 10", got)
	}
	if got := l.flush(true); got != nil {
		t.Fatalf("reported twice: %v", got)
	}
	// A new window: lines again, and what the old one left out that the
	// flush did not see is reported by the next occurrence.
	for i := 0; i < 5; i++ {
		l.allow("a")
	}
	now = now.Add(2 * time.Minute)
	ok, reported, total, _ := l.allow("a")
	if !ok || reported != 2 || total != 16 {
		t.Fatalf("next window: log %v, reported %d, total %d; want true, 2, 16", ok, reported, total)
	}
	for i := 0; i < 4; i++ {
		l.allow("a")
	}
	if got := l.flush(true); got["a"].Suppressed != 2 {
		t.Fatalf("flush(all) inside a window: %v, want 2 left out", got)
	}
}

// TestWarningsRateLimited: 200 bad connections write at most warnBurst
// warning lines of their kind and one summary with the rest counted.
func TestWarningsRateLimited(t *testing.T) {
	testutil.CheckLeaks(t)
	h := startServerWith(t, Config{}, func(s *Server) {
		s.warns = newWarnLimiter(warnBurst, time.Hour, time.Now)
	})
	for i := 0; i < 200; i++ {
		c := h.raw()
		if m := ask(t, c, []byte{1, '?', 0, 0}); m.Type != msgError || m.Err.Code != CodeMalformed {
			t.Fatalf("bad connection %d: %+v", i, m)
		}
		c.Close()
	}
	h.srv.Close()
	log := h.log.String()
	if n := strings.Count(log, `msg="closing connection"`); n != warnBurst {
		t.Errorf("200 bad connections wrote %d warning lines, want %d", n, warnBurst)
	}
	want := fmt.Sprintf(`msg="repeated warnings were left out" kind="closing connection: malformed message" left_out=%d total=200`, 200-warnBurst)
	if strings.Count(log, want) != 1 {
		t.Errorf("want one summary %q in the log:\n%s", want, log)
	}
}
