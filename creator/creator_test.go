package creator

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/porter-ipc/porter/fdpass"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// creatorPath is the porter-creator built for this test run, in a
// directory every user may enter.
var creatorPath string

func TestMain(m *testing.M) {
	testutil.MainWithCommands(m, func(dir string) { creatorPath = filepath.Join(dir, Name) }, "./cmd/porter-creator")
}

// start runs the creator, as uid/gid when uid >= 0, and closes it when the
// test ends, checking it exited with status 0 after 'T'.
func start(t testing.TB, uid, gid int) *Client {
	t.Helper()
	cmd := exec.Command(creatorPath)
	if uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	}
	c, err := StartCmd(cmd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("creator exit: %v", err)
		}
	})
	return c
}

func sockopt(t *testing.T, f *os.File, level, opt int) int {
	t.Helper()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), level, opt) })
	if gerr != nil {
		t.Fatalf("getsockopt(%d, %d): %v", level, opt, gerr)
	}
	return v
}

func fdFlags(t *testing.T, f *os.File) (fl, status int) {
	t.Helper()
	rc, _ := f.SyscallConn()
	rc.Control(func(fd uintptr) {
		fl, _ = unix.FcntlInt(fd, unix.F_GETFD, 0)
		status, _ = unix.FcntlInt(fd, unix.F_GETFL, 0)
	})
	return
}

func localAddr(t *testing.T, f *os.File) netip.AddrPort {
	t.Helper()
	rc, _ := f.SyscallConn()
	var sa unix.Sockaddr
	var err error
	rc.Control(func(fd uintptr) { sa, err = unix.Getsockname(int(fd)) })
	if err != nil {
		t.Fatal(err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
	}
	t.Fatalf("getsockname: %T", sa)
	return netip.AddrPort{}
}

// checkSocket proves f is what the protocol document promises for p on
// want: bound there, of the right type, with exactly the documented
// options, blocking, not listening, close-on-exec; and usable.
func checkSocket(t *testing.T, f *os.File, p Proto, want netip.AddrPort) {
	t.Helper()
	got := localAddr(t, f)
	if got.Addr() != want.Addr() || (want.Port() != 0 && got.Port() != want.Port()) || got.Port() == 0 {
		t.Errorf("bound to %v, want %v", got, want)
	}
	typ := unix.SOCK_STREAM
	if p == UDP {
		typ = unix.SOCK_DGRAM
	}
	if v := sockopt(t, f, unix.SOL_SOCKET, unix.SO_TYPE); v != typ {
		t.Errorf("SO_TYPE = %d, want %d", v, typ)
	}
	if v := sockopt(t, f, unix.SOL_SOCKET, unix.SO_REUSEADDR); v != 1 {
		t.Errorf("SO_REUSEADDR = %d, want 1", v)
	}
	if v := sockopt(t, f, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); v != 0 {
		t.Errorf("SO_ACCEPTCONN = %d: the creator must not listen", v)
	}
	if want.Addr().Is6() {
		if v := sockopt(t, f, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); v != 1 {
			t.Errorf("IPV6_V6ONLY = %d, want 1", v)
		}
		wantPMTU := unix.IPV6_PMTUDISC_WANT // the kernel's default
		if p == UDP {
			wantPMTU = unix.IPV6_PMTUDISC_DONT
		}
		if v := sockopt(t, f, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER); v != wantPMTU {
			t.Errorf("IPV6_MTU_DISCOVER = %d, want %d", v, wantPMTU)
		}
	}
	fl, st := fdFlags(t, f)
	if fl&unix.FD_CLOEXEC == 0 {
		t.Error("received socket is not close-on-exec")
	}
	if st&unix.O_NONBLOCK != 0 {
		t.Error("socket is non-blocking; the creator must leave it blocking")
	}
	// Usable: a TCP socket listens and accepts, a UDP one receives.
	dst := net.JoinHostPort(got.Addr().String(), fmt.Sprint(got.Port()))
	if p == TCP {
		rc, _ := f.SyscallConn()
		rc.Control(func(fd uintptr) { unix.Listen(int(fd), 1) })
		c, err := net.DialTimeout("tcp", dst, 5*time.Second)
		if err != nil {
			t.Fatalf("connect to the created listener: %v", err)
		}
		c.Close()
		return
	}
	c, err := net.Dial("udp", dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("ping"))
	buf := make([]byte, 8)
	n := -1
	rc, _ := f.SyscallConn()
	rc.Control(func(fd uintptr) {
		// The socket is blocking (as the creator hands it out): wait for
		// the datagram with poll(2), then read it without blocking.
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if k, err := unix.Poll(pfd, 5000); err != nil || k != 1 {
			t.Errorf("poll: %d %v, want the datagram within 5s", k, err)
			return
		}
		n, _, _ = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
	})
	if string(buf[:max(n, 0)]) != "ping" {
		t.Errorf("UDP socket received %q, want ping", buf[:max(n, 0)])
	}
}

var loopbacks = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")}

// TestCreate: every type and family, on a kernel-chosen port and, as
// root, on port 53.
func TestCreate(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CheckLeaks(t)
	c := start(t, -1, -1)
	// bind(2) to a specific IPv6 address sets IPV6_V6ONLY by itself, so
	// the wildcard shows whether the creator set it.
	addrs := append([]netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()}, loopbacks...)
	for _, p := range []Proto{TCP, UDP} {
		for _, a := range addrs {
			for _, port := range []uint16{0, 53} {
				ap := netip.AddrPortFrom(a, port)
				if port == 53 && a.IsUnspecified() {
					continue
				}
				t.Run(fmt.Sprintf("%s/%s", p, ap), func(t *testing.T) {
					f, err := c.Create(p, ap)
					if err != nil {
						t.Fatal(err)
					}
					defer f.Close()
					checkSocket(t, f, p, ap)
				})
			}
		}
	}
}

// TestNobody: a creator without privilege gets EACCES for port 53 on
// both families, as a typed *Error, and keeps serving. As root the test
// starts the creator as nobody; run as nobody (make test-nobody) the
// creator simply inherits the test's lack of privilege.
func TestNobody(t *testing.T) {
	testutil.CheckLeaks(t)
	requirePrivilegedPort53(t)
	uid, gid := -1, -1
	if os.Geteuid() == 0 {
		uid, gid = testutil.Nobody(t)
	}
	c := start(t, uid, gid)
	for _, a := range loopbacks {
		for _, p := range []Proto{TCP, UDP} {
			_, err := c.Create(p, netip.AddrPortFrom(a, 53))
			var ce *Error
			if !errors.As(err, &ce) || ce.Op != "bind" || ce.Errno != unix.EACCES || !errors.Is(err, syscall.EACCES) {
				t.Fatalf("%s %s:53 as nobody: %v, want *Error bind EACCES", p, a, err)
			}
			if ce.Proto != p || ce.Addr != netip.AddrPortFrom(a, 53) {
				t.Errorf("error names %s %s", ce.Proto, ce.Addr)
			}
		}
		f, err := c.Create(UDP, netip.AddrPortFrom(a, 0))
		if err != nil {
			t.Fatalf("after EACCES the creator must go on serving: %v", err)
		}
		checkSocket(t, f, UDP, netip.AddrPortFrom(a, 0))
		f.Close()
	}
	noCreatorSockets(t, c)
}

// requirePrivilegedPort53 fails t, saying why, where the kernel lets
// anyone bind port 53 (net.ipv4.ip_unprivileged_port_start at 53 or
// below, as on some container hosts): a test that expects EACCES there
// would fail for a reason that has nothing to do with porter.
func requirePrivilegedPort53(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")
	if err != nil {
		return // older kernels: every port below 1024 needs privilege
	}
	if n, _ := strconv.Atoi(strings.TrimSpace(string(b))); n <= 53 {
		t.Fatalf("NEEDS KERNEL SETTING: net.ipv4.ip_unprivileged_port_start is %d, so port 53 needs no privilege here; run sysctl -w net.ipv4.ip_unprivileged_port_start=1024", n)
	}
}

func TestAddrInUse(t *testing.T) {
	testutil.CheckLeaks(t)
	c := start(t, -1, -1)
	for _, a := range loopbacks {
		l, err := net.Listen("tcp", netip.AddrPortFrom(a, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).AddrPort().Port()
		_, err = c.Create(TCP, netip.AddrPortFrom(a, port))
		l.Close()
		var ce *Error
		if !errors.As(err, &ce) || ce.Op != "bind" || ce.Errno != unix.EADDRINUSE {
			t.Fatalf("busy port: %v, want bind EADDRINUSE", err)
		}
		if !strings.Contains(err.Error(), "EADDRINUSE") || !strings.Contains(err.Error(), "address already in use") {
			t.Errorf("message %q should name the errno and its text", err)
		}
	}
	noCreatorSockets(t, c)
}

func TestAddrNotAvail(t *testing.T) {
	testutil.CheckLeaks(t)
	c := start(t, -1, -1)
	for _, s := range []string{"192.0.2.1:0", "[2001:db8::1]:0"} {
		for _, p := range []Proto{TCP, UDP} {
			_, err := c.Create(p, netip.MustParseAddrPort(s))
			var ce *Error
			if !errors.As(err, &ce) || ce.Op != "bind" || ce.Errno != unix.EADDRNOTAVAIL {
				t.Fatalf("%s %s: %v, want bind EADDRNOTAVAIL", p, s, err)
			}
		}
	}
	f, err := c.Create(TCP, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatalf("after errors the creator must go on serving: %v", err)
	}
	f.Close()
	noCreatorSockets(t, c)
}

// TestSocketFails: socket(2) itself fails (EMFILE, the creator is out of
// descriptors) and is reported with step 'S'.
func TestSocketFails(t *testing.T) {
	testutil.CheckLeaks(t)
	prlimit := testutil.RequireProgram(t, "prlimit")
	c, err := StartCmd(exec.Command(prlimit, "--nofile=3:3", "--", creatorPath))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Create(UDP, netip.MustParseAddrPort("127.0.0.1:0"))
	var ce *Error
	if !errors.As(err, &ce) || ce.Op != "socket" || ce.Errno != unix.EMFILE {
		t.Fatalf("with RLIMIT_NOFILE 3: %v, want socket EMFILE", err)
	}
}

func TestBadRequests(t *testing.T) {
	testutil.CheckLeaks(t)
	c := start(t, -1, -1)
	for _, ap := range []netip.AddrPort{{}, netip.MustParseAddrPort("[fe80::1%lo]:0")} {
		if _, err := c.Create(TCP, ap); err == nil || errors.Is(err, ErrClosed) {
			t.Errorf("%v: %v, want a plain error", ap, err)
		}
	}
	if _, err := c.Create('X', netip.MustParseAddrPort("127.0.0.1:0")); err == nil || errors.Is(err, ErrClosed) {
		t.Errorf("bad proto: %v", err)
	}
	// An IPv4-mapped IPv6 address is sent as IPv4.
	f, err := c.Create(UDP, netip.MustParseAddrPort("[::ffff:127.0.0.1]:0"))
	if err != nil {
		t.Fatal(err)
	}
	checkSocket(t, f, UDP, netip.MustParseAddrPort("127.0.0.1:0"))
	f.Close()
}

// TestConcurrent: callers are serialised; every socket is distinct, and
// the creator keeps no descriptor of any socket it made.
func TestConcurrent(t *testing.T) {
	testutil.CheckLeaks(t)
	c := start(t, -1, -1)
	var mu sync.Mutex
	held := map[uint64]*os.File{} // by inode
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				f, err := c.Create(UDP, netip.MustParseAddrPort("127.0.0.1:0"))
				if err != nil {
					t.Error(err)
					return
				}
				var st unix.Stat_t
				if err := unix.Fstat(int(f.Fd()), &st); err != nil {
					t.Error(err)
				}
				mu.Lock()
				if held[st.Ino] != nil {
					t.Errorf("socket inode %d handed out twice", st.Ino)
					f.Close()
				} else {
					held[st.Ino] = f
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(held) != 200 {
		t.Errorf("%d distinct sockets, want 200", len(held))
	}
	for _, f := range held {
		f.Close()
	}
	noCreatorSockets(t, c)
}

// noCreatorSockets fails t unless c's creator soon holds no socket but its
// stdin and stdout. It closes its copy of a socket right after sending it,
// so the last one may take a moment; one it leaked stays.
func noCreatorSockets(t *testing.T, c *Client) {
	t.Helper()
	testutil.WaitFor(t, "the creator to hold no socket it made", func() bool { return extraSockets(t, c.Pid()) == "" })
}

// extraSockets lists the sockets pid holds besides its stdin and stdout.
func extraSockets(t *testing.T, pid int) string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if e.Name() == "0" || e.Name() == "1" {
			continue
		}
		if l, _ := os.Readlink(dir + "/" + e.Name()); strings.HasPrefix(l, "socket:") {
			out = append(out, e.Name()+" -> "+l)
		}
	}
	return strings.Join(out, ", ")
}

// TestCreatorDies: a killed creator fails the request in flight and every
// later one with ErrClosed, and Done is closed.
func TestCreatorDies(t *testing.T) {
	testutil.CheckLeaks(t)
	c, err := Start(creatorPath)
	if err != nil {
		t.Fatal(err)
	}
	c.cmd.Process.Kill()
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed after the creator was killed")
	}
	for i := 0; i < 2; i++ {
		if _, err := c.Create(TCP, netip.MustParseAddrPort("127.0.0.1:0")); !errors.Is(err, ErrClosed) {
			t.Fatalf("request %d to a dead creator: %v, want ErrClosed", i, err)
		}
	}
	if err := c.Close(); err == nil {
		t.Error("Close of a killed creator should report its exit")
	}
}

// pair returns a SOCK_STREAM socketpair: our end as an fdpass.Conn, the
// other as a file to give to a child.
func pair(t *testing.T) (*fdpass.Conn, *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Close through the *os.File: a bare unix.Close would leave it to close
	// the number again, whatever holds it by then, when it is finalized.
	ours := os.NewFile(uintptr(fds[0]), "ours")
	nc, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		t.Fatal(err)
	}
	c, err := fdpass.NewConn(nc.(*net.UnixConn))
	if err != nil {
		t.Fatal(err)
	}
	return c, os.NewFile(uintptr(fds[1]), "theirs")
}

// TestNewClient drives a creator over a connection it did not start.
func TestNewClient(t *testing.T) {
	testutil.CheckLeaks(t)
	a, tf := pair(t)
	cmd := exec.Command(creatorPath)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tf, tf, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tf.Close()
	c := NewClient(a)
	f, err := c.Create(TCP, netip.MustParseAddrPort("[::1]:0"))
	if err != nil {
		t.Fatal(err)
	}
	checkSocket(t, f, TCP, netip.MustParseAddrPort("[::1]:0"))
	f.Close()
	if c.Pid() != 0 {
		t.Errorf("Pid = %d for NewClient", c.Pid())
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	<-c.Done()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("creator after T: %v, want exit 0", err)
	}
}

// wire runs the creator on a raw socketpair, writes in (then shuts down
// the write side unless keepOpen), and returns everything it wrote, the
// number of descriptors that came, and its exit status.
func wire(t *testing.T, in []byte, keepOpen bool) (out []byte, nfds int, status int) {
	t.Helper()
	a, tf := pair(t)
	defer a.Close()
	var stderr bytes.Buffer
	cmd := exec.Command(creatorPath)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tf, tf, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tf.Close()
	if _, err := a.Send(in); err != nil && len(in) > 0 {
		t.Fatal(err)
	}
	if !keepOpen {
		a.Socket().(*net.UnixConn).CloseWrite()
	}
	out, nfds, err := readAll(a)
	if err != nil {
		cmd.Process.Kill()
	}
	cmd.Wait()
	if err != nil {
		t.Fatal(err)
	}
	status = cmd.ProcessState.ExitCode()
	if status != 0 && stderr.Len() > 0 {
		t.Logf("creator stderr: %s", stderr.String())
	}
	return out, nfds, status
}

// readAll reads what the creator wrote on a until it exits, counting (and
// closing) the descriptors that came with it.
func readAll(a *fdpass.Conn) (out []byte, nfds int, err error) {
	a.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	for {
		m, err := a.Recv(buf, 4)
		if err == io.EOF || errors.Is(err, unix.ECONNRESET) {
			// ECONNRESET: it exited leaving some input unread.
			return out, nfds, nil
		}
		if err != nil {
			return out, nfds, fmt.Errorf("%w, after %q with %d fds", err, out, nfds)
		}
		out = append(out, buf[:m.N]...)
		nfds += len(m.Files)
		m.Close()
	}
}

func ne32(v int32) []byte {
	b := make([]byte, 4)
	copy(b, unsafe.Slice((*byte)(unsafe.Pointer(&v)), 4))
	return b
}

// TestWire checks the byte-level protocol of docs/protocol-creator.md
// against the binary: answers, descriptors and exit statuses.
func TestWire(t *testing.T) {
	testutil.CheckLeaks(t)
	lo4 := []byte{0, 0, 127, 0, 0, 1}
	lo6 := append([]byte{0, 0}, netip.IPv6Loopback().AsSlice()...)
	testnet := []byte{0, 0, 192, 0, 2, 1}
	cat := func(parts ...any) []byte {
		var b []byte
		for _, p := range parts {
			switch p := p.(type) {
			case string:
				b = append(b, p...)
			case []byte:
				b = append(b, p...)
			}
		}
		return b
	}
	cases := []struct {
		name   string
		in     []byte
		out    []byte
		fds    int
		status int
	}{
		{"terminate", cat("T"), nil, 0, 0},
		{"eof before a command", nil, nil, 0, 1},
		{"eof after S", cat("S"), nil, 0, 1},
		{"eof after type", cat("SU"), nil, 0, 1},
		// Type and family are read together, then checked: a bad type
		// with no family byte yet is end of input, not invalid input.
		{"eof after bad type", cat("SX"), nil, 0, 1},
		{"eof in port", cat("SU4", []byte{0}), nil, 0, 1},
		{"eof in v4 address", cat("SU4", lo4[:5]), nil, 0, 1},
		{"eof in v6 address", cat("ST6", lo6[:17]), nil, 0, 1},
		{"unknown command", cat("X"), cat("FI"), 0, 3},
		{"lowercase t", cat("t"), cat("FI"), 0, 3},
		{"bad type", cat("SX4"), cat("FI"), 0, 3},
		{"bad family", cat("SU5"), cat("FI"), 0, 3},
		{"family 0", cat("ST", []byte{0}), cat("FI"), 0, 3},
		{"udp4 then T", cat("SU4", lo4, "T"), cat("S", []byte{0}), 1, 0},
		{"tcp6 then T", cat("ST6", lo6, "T"), cat("S", []byte{0}), 1, 0},
		{"two then eof", cat("SU4", lo4, "ST6", lo6), cat("S", []byte{0}, "S", []byte{0}), 2, 1},
		{"bind error then T", cat("SU4", testnet, "T"), cat("EB", ne32(int32(unix.EADDRNOTAVAIL))), 0, 0},
		{"error, success, invalid", cat("ST4", testnet, "ST4", lo4, "Q"), cat("EB", ne32(int32(unix.EADDRNOTAVAIL)), "S", []byte{0}, "FI"), 1, 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, fds, status := wire(t, c.in, false)
			if !bytes.Equal(out, c.out) || fds != c.fds || status != c.status {
				t.Errorf("in %q: out %q with %d fds, exit %d; want %q with %d fds, exit %d", c.in, out, fds, status, c.out, c.fds, c.status)
			}
		})
	}
}

// TestWriteFails: the client goes away after sending a request; writing
// the answer fails and the creator exits 2 (not killed by SIGPIPE).
func TestWriteFails(t *testing.T) {
	testutil.CheckLeaks(t)
	for _, req := range [][]byte{
		append([]byte("SU4"), 0, 0, 127, 0, 0, 1),
		append([]byte("SU4"), 0, 0, 192, 0, 2, 1),
		[]byte("X"), // F I cannot be written either: 2 wins over 3
	} {
		a, tf := pair(t)
		cmd := exec.Command(creatorPath)
		cmd.Stdin, cmd.Stdout = tf, tf
		a.Send(req)
		a.Close() // before the creator even starts: the request waits in its queue
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		tf.Close()
		cmd.Wait()
		if ws := cmd.ProcessState.Sys().(syscall.WaitStatus); ws.Signaled() || ws.ExitStatus() != 2 {
			t.Errorf("request %q, client gone: %v, want exit status 2", req, cmd.ProcessState)
		}
	}
}

// TestSocketOptionOrder watches the creator's system calls under strace:
// each socket gets exactly the options docs/protocol-creator.md lists, in
// that order, with those values, and no listen(2). (getsockopt cannot
// show IPV6_MTU: Linux reports the route's MTU there, not the value set.)
func TestSocketOptionOrder(t *testing.T) {
	testutil.CheckLeaks(t)
	strace := testutil.RequireProgram(t, "strace")
	lo6 := netip.IPv6Loopback().As16()
	cases := []struct {
		req  []byte
		want []string
	}{
		{append([]byte("SU4\x00\x00"), 127, 0, 0, 1), []string{
			"socket AF_INET SOCK_DGRAM|SOCK_CLOEXEC",
			"setsockopt SOL_SOCKET SO_REUSEADDR [1]",
			"bind AF_INET",
		}},
		{append([]byte("ST4\x00\x00"), 127, 0, 0, 1), []string{
			"socket AF_INET SOCK_STREAM|SOCK_CLOEXEC",
			"setsockopt SOL_SOCKET SO_REUSEADDR [1]",
			"bind AF_INET",
		}},
		{append([]byte("SU6\x00\x00"), lo6[:]...), []string{
			"socket AF_INET6 SOCK_DGRAM|SOCK_CLOEXEC",
			"setsockopt SOL_SOCKET SO_REUSEADDR [1]",
			"setsockopt SOL_IPV6 IPV6_V6ONLY [1]",
			"bind AF_INET6",
			"setsockopt SOL_IPV6 IPV6_MTU [1280]",
			"setsockopt SOL_IPV6 IPV6_MTU_DISCOVER [0]", // IPV6_PMTUDISC_DONT
		}},
		{append([]byte("ST6\x00\x00"), lo6[:]...), []string{
			"socket AF_INET6 SOCK_STREAM|SOCK_CLOEXEC",
			"setsockopt SOL_SOCKET SO_REUSEADDR [1]",
			"setsockopt SOL_IPV6 IPV6_V6ONLY [1]",
			"bind AF_INET6",
		}},
	}
	call := regexp.MustCompile(`^(?:\d+ +)?(\w+)\((.*)\) += (-?\d+)`)
	for _, c := range cases {
		trace := filepath.Join(t.TempDir(), "trace")
		cmd := exec.Command(strace, "-f", "-qq", "-o", trace, "-e", "trace=socket,setsockopt,bind,listen", "-e", "signal=none", creatorPath)
		a, tf := pair(t)
		cmd.Stdin, cmd.Stdout = tf, tf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		tf.Close()
		if _, err := a.Send(append(c.req, 'T')); err != nil {
			t.Fatal(err)
		}
		_, nfds, err := readAll(a)
		a.Close()
		if werr := cmd.Wait(); err != nil || werr != nil || nfds != 1 {
			t.Fatalf("%q under strace: %d fds, %v, %v", c.req[:3], nfds, err, werr)
		}
		raw, err := os.ReadFile(trace)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
			if strings.Contains(line, "<detached ...>") {
				continue // a runtime thread caught at exit, not a call we trace
			}
			m := call.FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("strace line %q not understood", line)
			}
			if m[3] != "0" && m[1] != "socket" {
				t.Errorf("%s failed: %s", m[1], line)
			}
			args := strings.Split(m[2], ", ")
			switch m[1] {
			case "socket":
				got = append(got, "socket "+args[0]+" "+args[1])
			case "setsockopt":
				got = append(got, strings.Join(append([]string{"setsockopt"}, args[1:4]...), " "))
			case "bind":
				got = append(got, "bind "+strings.TrimPrefix(args[1], "{sa_family="))
			default:
				got = append(got, m[1])
			}
		}
		if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
			t.Errorf("%q: the creator called\n  %s\nwant\n  %s", c.req[:3], strings.Join(got, "\n  "), strings.Join(c.want, "\n  "))
		}
	}
}

// TestSendFails provokes exit status 4: the creator has written 'S' but
// cannot send the descriptor. Running as nobody (no CAP_SYS_RESOURCE) with
// RLIMIT_NOFILE 8, it may have at most 9 descriptors in flight (the
// kernel refuses a send once more than the limit are: unix(7),
// ETOOMANYREFS); the client reads nothing until the creator exits.
func TestSendFails(t *testing.T) {
	testutil.CheckLeaks(t)
	testutil.RequireRoot(t) // to run the creator as nobody
	uid, gid := testutil.Nobody(t)
	prlimit := testutil.RequireProgram(t, "prlimit")
	cmd := exec.Command(prlimit, "--nofile=8:8", "--", creatorPath)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	var in []byte
	for range 16 {
		in = append(in, "SU4\x00\x00\x7f\x00\x00\x01"...)
	}
	a, tf := pair(t)
	defer a.Close()
	cmd.Stdin, cmd.Stdout = tf, tf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tf.Close()
	if _, err := a.Send(in); err != nil {
		t.Fatal(err)
	}
	cmd.Wait() // read nothing before it exits: keep them all in flight
	status := cmd.ProcessState.ExitCode()
	out, nfds, err := readAll(a)
	if err != nil {
		t.Fatal(err)
	}
	// Other processes of nobody's may have fds in flight too, so the
	// number that got through before the failure is at most 9.
	ok := strings.Repeat("S\x00", nfds) + "S"
	if status != 4 || nfds > 9 || string(out) != ok {
		t.Errorf("16 unread sockets as nobody with RLIMIT_NOFILE 8: out %q, %d fds, exit %d; want %q and exit 4", out, nfds, status, ok)
	}
}

// TestNotASocket: stdin and stdout must be a Unix socket.
func TestNotASocket(t *testing.T) {
	testutil.CheckLeaks(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	uf, _ := udp.(*net.UDPConn).File()
	udp.Close()
	defer uf.Close()
	a, sf := pair(t)
	defer a.Close()
	defer sf.Close()
	for _, c := range []struct {
		name        string
		stdin, sout *os.File
		want        string
	}{
		{"pipes", r, w, "stdin is not a Unix socket"},
		{"socket in, pipe out", sf, w, "stdout is not a Unix socket"},
		{"udp socket", uf, uf, "stdin is not a Unix socket"},
	} {
		var stderr bytes.Buffer
		cmd := exec.Command(creatorPath)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = c.stdin, c.sout, &stderr
		err := cmd.Run()
		if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 1 || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("%s: %v, stderr %q; want exit 1 and %q", c.name, err, stderr.String(), c.want)
		}
	}
}

// TestPythonClient drives the creator with a client written in Python from
// docs/protocol-creator.md alone.
func TestPythonClient(t *testing.T) {
	testutil.CheckLeaks(t)
	py := testutil.RequireProgram(t, "python3")
	cmd := exec.Command(py, "testdata/client.py", creatorPath)
	out, err := cmd.CombinedOutput()
	t.Logf("client.py:\n%s", out)
	if err != nil {
		t.Fatalf("python client: %v", err)
	}
	if !strings.Contains(string(out), "all checks passed") {
		t.Fatal("python client did not finish its checks")
	}
}

// BenchmarkCreate: sockets created per second through the Go client
// (UDP on 127.0.0.1, kernel-chosen port, closed at once).
func BenchmarkCreate(b *testing.B) {
	c, err := Start(creatorPath)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ap := netip.MustParseAddrPort("127.0.0.1:0")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f, err := c.Create(UDP, ap)
		if err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sockets/s")
}

// TestDeadCreatorLetGo: when the creator process exits, the Client
// closes its end of their socketpair at once (Done is closed after it),
// not at the next Create or never.
func TestDeadCreatorLetGo(t *testing.T) {
	testutil.CheckLeaks(t)
	before := testutil.OpenFDs()
	c, err := Start(creatorPath)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fd, target := -1, ""
	for n, tg := range testutil.OpenFDs() {
		if _, ok := before[n]; !ok && strings.HasPrefix(tg, "socket:") {
			fd, target = n, tg
		}
	}
	if fd < 0 {
		t.Fatal("no new socket after Start")
	}
	if err := c.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-c.Done()
	if tg, ok := testutil.OpenFDs()[fd]; ok && tg == target {
		t.Fatalf("fd %d (%s), our end of the dead creator's socketpair, is still open", fd, target)
	}
	if _, err := c.Create(TCP, netip.MustParseAddrPort("127.0.0.1:0")); !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("request to a dead creator: %v, want ErrClosed saying it exited", err)
	}
}

// TestStoppedCreatorTimesOut: a creator stopped with SIGSTOP fails Create
// after the timeout with ErrClosed and os.ErrDeadlineExceeded, and is
// killed; Done is closed.
func TestStoppedCreatorTimesOut(t *testing.T) {
	testutil.CheckLeaks(t)
	c, err := Start(creatorPath)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetTimeout(200 * time.Millisecond)
	pid := c.Pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the creator to stop", func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		i := bytes.LastIndexByte(b, ')')
		return err == nil && i > 0 && i+2 < len(b) && b[i+2] == 'T'
	})
	res := make(chan error, 1)
	go func() {
		f, err := c.Create(UDP, netip.MustParseAddrPort("127.0.0.1:0"))
		if f != nil {
			f.Close()
		}
		res <- err
	}()
	select {
	case err = <-res:
	case <-time.After(30 * time.Second): // a guard far above the timeout
		syscall.Kill(pid, syscall.SIGKILL) // let the test end
		t.Fatal("Create still waits on a stopped creator")
	}
	if !errors.Is(err, ErrClosed) || !errors.Is(err, os.ErrDeadlineExceeded) || !strings.Contains(err.Error(), "did not answer within 200ms") {
		t.Fatalf("Create on a stopped creator: %v", err)
	}
	<-c.Done()
	if err := c.Close(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("Close after the timeout: %v, want the kill reported", err)
	}
}
