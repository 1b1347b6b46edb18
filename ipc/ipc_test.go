package ipc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/porter-ipc/porter/access"
	"github.com/porter-ipc/porter/fdpass"
	"github.com/porter-ipc/porter/internal/sockpath"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	testutil.RunChildren(map[string]func() int{"dial": childDial})
	os.Exit(m.Run())
}

// childDial connects to $IPC_PATH, writes "ping\n" and prints the reply
// line: exit 0 with a reply, 3 when the server closed without one.
func childDial() int {
	c, err := Dial(os.Getenv("IPC_PATH"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		return 2
	}
	defer c.Close()
	c.Write([]byte("ping\n"))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 3
	}
	fmt.Print(line)
	return 0
}

// sockPath returns a socket path in a directory anyone may enter, so that
// children running as nobody can connect.
func sockPath(t testing.TB) string {
	t.Helper()
	return filepath.Join(testutil.SharedDir(t), "s")
}

// echoLine answers every line with "echo <line>" and, first, a line with
// the UCSPI environment it would give a program.
func echoLine(c *Conn) {
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if _, err := fmt.Fprintf(c, "echo %s", line); err != nil {
			return
		}
	}
}

// start runs s on a fresh socket and stops it when the test ends.
func start(t testing.TB, s *Server) string {
	t.Helper()
	path := sockPath(t)
	l, err := Listen(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return path
}

func roundTrip(t *testing.T, c *Conn, msg string) string {
	t.Helper()
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read reply to %q: %v", msg, err)
	}
	return strings.TrimSuffix(line, "\n")
}

func TestServeAndDial(t *testing.T) {
	testutil.CheckLeaks(t)
	envs := make(chan []access.EnvChange, 1)
	s := &Server{Handler: HandlerFunc(func(c *Conn) {
		if p := c.Peer(); p.PID != os.Getpid() || p.UID != os.Geteuid() || p.GID != os.Getegid() {
			t.Errorf("server sees peer %+v", p)
		}
		envs <- c.Env()
		echoLine(c)
	})}
	path := start(t, s)
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p := c.Peer(); p.PID != os.Getpid() || p.UID != os.Geteuid() {
		t.Errorf("client sees server %+v", p)
	}
	if got := roundTrip(t, c, "hello"); got != "echo hello" {
		t.Fatalf("reply %q", got)
	}
	env := <-envs
	want := fmt.Sprintf("PROTO=IPC IPCREMOTEEUID=%d IPCREMOTEEGID=%d IPCCONNNUM=1 IPCREMOTEPATH=", os.Geteuid(), os.Getegid())
	if got := envString(env); got != want {
		t.Fatalf("env %q, want %q", got, want)
	}
}

func envString(env []access.EnvChange) string {
	var parts []string
	for _, e := range env {
		parts = append(parts, e.Name+"="+e.Value)
	}
	return strings.Join(parts, " ")
}

func TestRulesEnvAndLocalPath(t *testing.T) {
	testutil.CheckLeaks(t)
	rules := access.Rules{"uid/self": {Verdict: access.Allow, Env: []access.EnvChange{{Name: "ROLE", Value: "admin"}}}}
	envs := make(chan []access.EnvChange, 1)
	s := &Server{Rules: rules, Handler: HandlerFunc(func(c *Conn) { envs <- c.Env(); echoLine(c) })}
	path := start(t, s)
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c, "x")
	got := envString(<-envs)
	if !strings.HasSuffix(got, " ROLE=admin IPCLOCALPATH="+path) {
		t.Fatalf("env %q lacks the rule's env and IPCLOCALPATH", got)
	}
}

func TestDeniedAsNobody(t *testing.T) {
	testutil.CheckLeaks(t)
	testutil.RequireRoot(t)
	nuid, ngid := testutil.Nobody(t)
	var events = make(chan Event, 4)
	s := &Server{
		Rules:   access.Rules{"uid/0": {Verdict: access.Allow}, "uid/default": {Verdict: access.Deny}},
		Handler: HandlerFunc(echoLine),
		Log:     func(e Event) { events <- e },
	}
	path := start(t, s)
	for _, who := range []struct {
		uid, gid int
		code     int
	}{{0, 0, 0}, {nuid, ngid, 3}} {
		cmd := testutil.Child(t, "dial", who.uid, who.gid)
		cmd.Env = append(cmd.Env, "IPC_PATH="+path)
		out, err := cmd.Output()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != who.code {
			t.Fatalf("uid %d: exit %d (out %q), want %d", who.uid, code, out, who.code)
		}
		e := <-events
		wantKind := map[int]EventKind{0: EventAllow, 3: EventDeny}[who.code]
		if e.Kind != wantKind || e.Peer.UID != who.uid {
			t.Fatalf("uid %d: event %+v, want %s", who.uid, e, wantKind)
		}
	}
}

func TestPerUIDLimit(t *testing.T) {
	testutil.CheckLeaks(t)
	events := make(chan Event, 8)
	s := &Server{MaxPerUID: 1, Handler: HandlerFunc(echoLine), Log: func(e Event) { events <- e }}
	path := start(t, s)
	first, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	roundTrip(t, first, "1") // the first is being served
	<-events
	second, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	// Over the per-uid limit: accepted and closed at once.
	if n, err := second.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("second client read %d, %v; want EOF", n, err)
	}
	if e := <-events; e.Kind != EventLimit {
		t.Fatalf("event %+v, want limit", e)
	}
	// The first is unaffected.
	if got := roundTrip(t, first, "2"); got != "echo 2" {
		t.Fatalf("first after limit: %q", got)
	}
}

func TestMaxConnsWaitsInBacklog(t *testing.T) {
	testutil.CheckLeaks(t)
	started := make(chan *Conn, 4)
	s := &Server{MaxConns: 1, Handler: HandlerFunc(func(c *Conn) { started <- c; echoLine(c) })}
	path := start(t, s)
	first, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	<-started
	second, err := Dial(path) // connects: the kernel queues it in the backlog
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	io.WriteString(second, "queued\n")
	// Not served while the first holds the only slot: no reply within
	// a deadline (the assertion of an absence needs some bound).
	second.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := second.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("second served while over MaxConns: %v", err)
	}
	if n := s.Open(); n != 1 {
		t.Fatalf("Open() = %d, want 1", n)
	}
	first.Close()
	<-started
	second.SetReadDeadline(time.Time{})
	line, err := bufio.NewReader(second).ReadString('\n')
	if err != nil || line != "echo queued\n" {
		t.Fatalf("second after the first left: %q %v", line, err)
	}
}

// TestSilentAndVanishingClients: with MaxConns 3 taken by a client that
// says nothing, one that floods and never reads, and one that leaves in
// the middle of a line, the one that left frees its place (its handler
// returns and Open drops), and a new client is served in it.
func TestSilentAndVanishingClients(t *testing.T) {
	testutil.CheckLeaks(t)
	var returned atomic.Int32
	s := &Server{MaxConns: 3, Handler: HandlerFunc(func(c *Conn) {
		echoLine(c)
		returned.Add(1)
	})}
	path := start(t, s)
	silent, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	flood, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer flood.Close()
	go func() {
		buf := []byte(strings.Repeat("x\n", 1<<15))
		for {
			if _, err := flood.Write(buf); err != nil {
				return
			}
		}
	}()
	half, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "three connections served", func() bool { return s.Open() == 3 })
	io.WriteString(half, "no newline")
	half.Close()
	testutil.WaitFor(t, "the vanished client's handler to return and free its place", func() bool {
		return returned.Load() == 1 && s.Open() == 2
	})
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if got := roundTrip(t, c, "still here"); got != "echo still here" {
		t.Fatalf("reply %q", got)
	}
}

func TestPassFDs(t *testing.T) {
	testutil.CheckLeaks(t)
	s := &Server{Handler: HandlerFunc(func(c *Conn) {
		m, err := c.RecvFull(make([]byte, 1), 1)
		if err != nil || len(m.Files) != 1 {
			t.Errorf("server recv: %v %d fds", err, len(m.Files))
			m.Close()
			return
		}
		defer m.Close()
		m.Files[0].WriteString("written by the server")
	})}
	path := start(t, s)
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := c.Send([]byte{1}, w); err != nil {
		t.Fatal(err)
	}
	w.Close() // sending borrows: ours to close
	b, err := io.ReadAll(r)
	if err != nil || string(b) != "written by the server" {
		t.Fatalf("pipe got %q %v", b, err)
	}
}

func TestChannel(t *testing.T) {
	testutil.CheckLeaks(t)
	for _, typ := range []int{unix.SOCK_STREAM, unix.SOCK_SEQPACKET} {
		s := &Server{Handler: HandlerFunc(func(c *Conn) {
			ch, err := c.OfferChannel(typ, 42)
			if err != nil {
				t.Errorf("offer: %v", err)
				return
			}
			defer ch.Close()
			ch.Send([]byte("event"))
			io.Copy(io.Discard, c) // until the client leaves
		})}
		path := start(t, s)
		c, err := Dial(path)
		if err != nil {
			t.Fatal(err)
		}
		ch, o, err := c.AcceptChannel()
		if err != nil {
			t.Fatal(err)
		}
		if o.Tag != 42 || o.Type != typ || ch.Type() != typ {
			t.Fatalf("offer %+v, channel type %d", o, ch.Type())
		}
		buf := make([]byte, 16)
		m, err := ch.RecvFull(buf[:5], 0)
		if err != nil || string(buf[:m.N]) != "event" {
			t.Fatalf("channel got %q %v", buf[:m.N], err)
		}
		ch.Close()
		c.Close()
	}
}

func TestBadOffers(t *testing.T) {
	testutil.CheckLeaks(t)
	good := EncodeOffer(Offer{Type: unix.SOCK_STREAM, Tag: 1})
	pipeR, pipeW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pipeR.Close()
	defer pipeW.Close()
	sa, sb, err := fdpass.Socketpair(unix.SOCK_SEQPACKET)
	if err != nil {
		t.Fatal(err)
	}
	defer sa.Close()
	defer sb.Close()
	seqFile := sb.Socket().(*os.File)
	bad := func(b []byte, i int, v byte) []byte { c := append([]byte(nil), b...); c[i] = v; return c }
	cases := []struct {
		name  string
		data  []byte
		files []*os.File
	}{
		{"bad magic", bad(good, 0, 'X'), []*os.File{seqFile}},
		{"bad version", bad(good, 4, 9), []*os.File{seqFile}},
		{"bad type", bad(good, 5, 2), []*os.File{seqFile}},
		{"no fd", good, nil},
		{"two fds", good, []*os.File{seqFile, seqFile}},
		{"not a socket", good, []*os.File{pipeR}},
		{"wrong socket type", good, []*os.File{seqFile}},
	}
	for _, tc := range cases {
		a, b, err := socketpairConns()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.Send(tc.data, tc.files...); err != nil {
			t.Fatalf("%s: send: %v", tc.name, err)
		}
		ch, _, err := b.AcceptChannel()
		if ch != nil {
			ch.Close()
		}
		if !errors.Is(err, ErrBadOffer) {
			t.Errorf("%s: err = %v, want ErrBadOffer", tc.name, err)
		}
		a.Close()
		b.Close()
	}
}

// socketpairConns returns two connected Conns over a socketpair.
func socketpairConns() (*Conn, *Conn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	mk := func(fd int) (*Conn, error) {
		f := os.NewFile(uintptr(fd), "socketpair")
		nc, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, err
		}
		return newConn(nc.(*net.UnixConn))
	}
	a, err := mk(fds[0])
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	b, err := mk(fds[1])
	if err != nil {
		a.Close()
		return nil, nil, err
	}
	return a, b, nil
}

func TestListenStaleAndLive(t *testing.T) {
	testutil.CheckLeaks(t)
	path := sockPath(t)

	// A stale socket: bound, never listening any more (its server died).
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	if _, err := Listen(path, &ListenConfig{NoReplace: true}); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("NoReplace over a stale socket: %v, want EADDRINUSE", err)
	}
	l, err := Listen(path, nil)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	// A live one is never replaced, and keeps serving.
	if l2, err := Listen(path, nil); !errors.Is(err, syscall.EADDRINUSE) {
		if l2 != nil {
			l2.Close()
		}
		t.Fatalf("second Listen on a live socket: %v, want EADDRINUSE", err)
	}
	go func() { // the probe of the second Listen connected too: serve all
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("alive"))
			c.Close()
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("live server clobbered: %v", err)
	}
	b, _ := io.ReadAll(c)
	c.Close()
	if string(b) != "alive" {
		t.Fatalf("live server said %q", b)
	}
	l.Close()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Close left the socket file: %v", err)
	}

	// A file that is not a socket is never removed.
	if err := os.WriteFile(path, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(path, nil); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("Listen over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "data" {
		t.Fatal("regular file clobbered")
	}
}

func TestListenPermAndBacklog(t *testing.T) {
	testutil.CheckLeaks(t)
	for _, tc := range []struct {
		perm, want os.FileMode
	}{{0, 0o777}, {0o600, 0o600}, {0o660, 0o660}, {os.ModeSocket, 0}} {
		path := sockPath(t)
		l, err := Listen(path, &ListenConfig{Perm: tc.perm, Backlog: 3})
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(path)
		l.Close()
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != tc.want || fi.Mode()&os.ModeSocket == 0 {
			t.Errorf("Perm %v: mode %v, want %v", tc.perm, fi.Mode(), tc.want)
		}
	}
}

func TestShutdownWaitsForHandlers(t *testing.T) {
	testutil.CheckLeaks(t)
	release := make(chan struct{})
	inside := make(chan struct{})
	s := &Server{Handler: HandlerFunc(func(c *Conn) { close(inside); <-release })}
	path := sockPath(t)
	l, err := Listen(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-inside
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := Dial(path); err == nil {
		t.Fatal("Dial after Shutdown succeeded")
	}
	close(release)
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

func TestSpawn(t *testing.T) {
	testutil.CheckLeaks(t)
	testutil.RequireProgram(t, "sh")
	exited := make(chan int, 1)
	sp := &Spawn{
		Argv:   []string{"sh", "-c", `read line; echo "got $line uid=$IPCREMOTEEUID n=$IPCCONNNUM"; ls /proc/self/fd | sort -n | tr '\n' ' '`},
		Env:    []string{"PATH=" + os.Getenv("PATH")},
		Exited: func(pid int, _ fdpass.Cred, st *os.ProcessState) { exited <- st.ExitCode() },
	}
	s := &Server{Handler: sp}
	path := start(t, s)
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "hi\n")
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitN(string(b), "\n", 2)
	if want := "got hi uid=" + strconv.Itoa(os.Geteuid()) + " n=1"; lines[0] != want {
		t.Fatalf("program said %q, want %q", lines[0], want)
	}
	// ls's own fds: 0 1 2 and the one it reads /proc/self/fd with (3),
	// and whatever the test process itself inherited without
	// close-on-exec (none under CI; a terminal may leave some).
	want := []int{0, 1, 2, 3}
	for _, fd := range testutil.InheritedFDs() {
		if fd != 3 {
			want = append(want, fd)
		}
	}
	sort.Ints(want)
	if fds := strings.TrimSpace(lines[1]); fds != strings.Trim(fmt.Sprint(want), "[]") {
		t.Fatalf("program's fds: %q, want %v: 0 1 2, ls's own 3, and those inherited by the test (%v)", fds, want, testutil.InheritedFDs())
	}
	if code := <-exited; code != 0 {
		t.Fatalf("exit %d", code)
	}
}

func TestSpawnFailsToExec(t *testing.T) {
	testutil.CheckLeaks(t)
	errs := make(chan error, 2)
	sp := &Spawn{Argv: []string{"/nonexistent/prog"}, Started: func(pid int, _ fdpass.Cred, err error) { errs <- err }}
	path := start(t, &Server{Handler: sp})
	for i := 0; i < 2; i++ { // the server keeps serving after a failure
		c, err := Dial(path)
		if err != nil {
			t.Fatal(err)
		}
		if n, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("read %d %v, want EOF", n, err)
		}
		c.Close()
		if err := <-errs; !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("Started err = %v, want ErrNotExist", err)
		}
	}
}

// TestSpawnStop: Signal reaches the running programs; Stop signals them
// and runs no more: a later connection is closed at once and reported as
// ErrSpawnStopped.
func TestSpawnStop(t *testing.T) {
	testutil.CheckLeaks(t)
	started := make(chan error, 2)
	exited := make(chan string, 1)
	sp := &Spawn{
		Argv:    []string{"sh", "-c", `trap "" TERM; exec cat`}, // ignores SIGTERM, across exec
		Started: func(_ int, _ fdpass.Cred, err error) { started <- err },
		Exited:  func(_ int, _ fdpass.Cred, st *os.ProcessState) { exited <- st.String() },
	}
	path := start(t, &Server{Handler: sp})
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := roundTrip(t, c, "hi"); got != "hi" || <-started != nil {
		t.Fatalf("cat answered %q", got)
	}
	sp.Signal(syscall.SIGTERM)
	if got := roundTrip(t, c, "still"); got != "still" {
		t.Fatalf("after an ignored SIGTERM cat answered %q", got)
	}
	sp.Stop(syscall.SIGKILL)
	if st := <-exited; st != "signal: killed" {
		t.Fatalf("program ended with %q, want SIGKILL", st)
	}
	c2, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c2.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("connection after Stop: read %d %v, want EOF", n, err)
	}
	if err := <-started; !errors.Is(err, ErrSpawnStopped) {
		t.Fatalf("Started after Stop: %v, want ErrSpawnStopped", err)
	}
}

// TestListenTakesS6Lock: Listen takes the lock s6-ipcserver takes while
// it binds (PATH.lock): held by someone else, Listen fails with EBUSY and
// leaves the stale socket there alone; s6-ipcserver fails the same way
// while Listen holds it (checked by holding it as Listen does); free, the
// stale socket is replaced and PATH.lock is left, as s6 leaves it.
func TestListenTakesS6Lock(t *testing.T) {
	testutil.CheckLeaks(t)
	s6server := testutil.RequireProgram(t, "s6-ipcserver")
	path := sockPath(t)
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	unlock, err := sockpath.Lock(path)
	if err != nil {
		t.Fatal(err)
	}
	if l, err := Listen(path, nil); !errors.Is(err, syscall.EBUSY) {
		if l != nil {
			l.Close()
		}
		unlock()
		t.Fatalf("Listen with PATH.lock held: %v, want EBUSY", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, s6server, "-1", path, "true").CombinedOutput()
	unlock()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 111 || !strings.Contains(string(out), "busy") {
		t.Fatalf("s6-ipcserver with PATH.lock held as Listen holds it: %v %s, want exit 111, busy", err, out)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("the stale socket was touched under the lock: %v", err)
	}
	l, err := Listen(path, nil)
	if err != nil {
		t.Fatalf("Listen once the lock is free: %v", err)
	}
	l.Close()
	if _, err := os.Lstat(path + ".lock"); err != nil {
		t.Fatalf("PATH.lock: %v, want it left as s6 leaves it", err)
	}
}

// TestOfferChannelError: a bad socket type is an ipc error that names
// ipc and the operation and wraps EINVAL.
func TestOfferChannelError(t *testing.T) {
	testutil.CheckLeaks(t)
	a, b, err := socketpairConns()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer b.Close()
	_, err = a.OfferChannel(unix.SOCK_DGRAM, 1)
	var oe *OpError
	if !errors.As(err, &oe) || !errors.Is(err, unix.EINVAL) || !strings.HasPrefix(err.Error(), "ipc: offer channel: ") {
		t.Fatalf("OfferChannel(SOCK_DGRAM): %v, want an *ipc.OpError \"ipc: offer channel: ...\" wrapping EINVAL", err)
	}
}

// TestPolicy: an embedder's Policy replaces the rules: it allows this
// process by pid, with an env change, and refuses a child with a reason
// that the Log sees.
func TestPolicy(t *testing.T) {
	testutil.CheckLeaks(t)
	events := make(chan Event, 4)
	envs := make(chan []access.EnvChange, 1)
	s := &Server{
		// Rules that would deny everyone: the Policy wins.
		Rules: access.Rules{"uid/default": {Verdict: access.Deny}},
		Policy: func(cred fdpass.Cred) access.Decision {
			if cred.PID == os.Getpid() {
				return access.Decision{Allow: true, Reason: "the test itself", Env: []access.EnvChange{{Name: "WHO", Value: "test"}}}
			}
			return access.Decision{Reason: fmt.Sprintf("pid %d is not the test", cred.PID)}
		},
		Handler: HandlerFunc(func(c *Conn) { envs <- c.Env(); echoLine(c) }),
		Log:     func(e Event) { events <- e },
	}
	path := start(t, s)
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := roundTrip(t, c, "hi"); got != "echo hi" {
		t.Fatalf("reply %q", got)
	}
	if e := <-events; e.Kind != EventAllow || e.Rule != "the test itself" {
		t.Errorf("event %+v, want allow by the test's policy", e)
	}
	if got := envString(<-envs); !strings.HasSuffix(got, " WHO=test IPCLOCALPATH="+path) {
		t.Errorf("env %q lacks the policy's env and IPCLOCALPATH", got)
	}

	cmd := testutil.Child(t, "dial", -1, -1)
	cmd.Env = append(cmd.Env, "IPC_PATH="+path)
	var ee *exec.ExitError
	if out, err := cmd.Output(); !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("child: %v (out %q), want exit 3: closed without a reply", err, out)
	}
	e := <-events
	if want := fmt.Sprintf("pid %d is not the test", cmd.Process.Pid); e.Kind != EventDeny || e.Rule != want || e.Peer.PID != cmd.Process.Pid {
		t.Errorf("event %+v, want deny with reason %q", e, want)
	}
}
