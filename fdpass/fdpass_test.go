package fdpass_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/porter-ipc/porter/fdpass"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	testutil.RunChildren(map[string]func() int{
		"emfile":      childEMFILE,
		"toomanyrefs": childTooManyRefs,
		"peer":        childPeer,
	})
	os.Exit(m.Run())
}

var sockTypes = []struct {
	name string
	typ  int
}{
	{"stream", unix.SOCK_STREAM},
	{"seqpacket", unix.SOCK_SEQPACKET},
	{"dgram", unix.SOCK_DGRAM},
}

func pair(t *testing.T, typ int) (*fdpass.Conn, *fdpass.Conn) {
	t.Helper()
	a, b, err := fdpass.Socketpair(typ)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func pipes(t *testing.T, n int) (r, w []*os.File) {
	t.Helper()
	for i := 0; i < n; i++ {
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pr.Close(); pw.Close() })
		r, w = append(r, pr), append(w, pw)
	}
	return r, w
}

// TestSendRecvUsable sends 0..N pipe write ends over each socket type and
// proves each received fd is the same pipe: a write through it arrives at
// the matching read end.
func TestSendRecvUsable(t *testing.T) {
	for _, st := range sockTypes {
		for _, n := range []int{0, 1, 2, 16, fdpass.MaxFDsPerMessage} {
			t.Run(fmt.Sprintf("%s/%d", st.name, n), func(t *testing.T) {
				testutil.CheckLeaks(t)
				a, b := pair(t, st.typ)
				r, w := pipes(t, n)
				if _, err := a.Send([]byte("hello"), w...); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 16)
				m, err := b.RecvFull(buf[:5], n)
				if err != nil {
					t.Fatal(err)
				}
				defer m.Close()
				if string(buf[:m.N]) != "hello" || len(m.Files) != n {
					t.Fatalf("got %q with %d fds, want %q with %d", buf[:m.N], len(m.Files), "hello", n)
				}
				for i, f := range m.Files {
					if _, err := f.Write([]byte{byte(i)}); err != nil {
						t.Fatal(err)
					}
					one := make([]byte, 1)
					if _, err := io.ReadFull(r[i], one); err != nil || one[0] != byte(i) {
						t.Fatalf("pipe %d: read %v, %v", i, one, err)
					}
					flags, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
					if err != nil || flags&unix.FD_CLOEXEC == 0 {
						t.Fatalf("fd %d: not close-on-exec (flags %#x, %v)", i, flags, err)
					}
				}
			})
		}
	}
}

// TestPassedListener accepts a connection on a listening socket that went
// through fdpass, over a net.UnixConn made by net.ListenUnix.
func TestPassedListener(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: filepath.Join(dir, "s"), Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *net.UnixConn, 1)
	go func() {
		c, _ := ln.AcceptUnix()
		accepted <- c
	}()
	dc, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: filepath.Join(dir, "s"), Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	a, err := fdpass.NewConn(dc)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	sc := <-accepted
	b, err := fdpass.NewConn(sc)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	tcp, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	tf, err := tcp.File()
	if err != nil {
		t.Fatal(err)
	}
	defer tf.Close()
	if _, err := a.Send([]byte{1}, tf); err != nil {
		t.Fatal(err)
	}
	m, err := b.Recv(make([]byte, 1), 1)
	if err != nil {
		t.Fatal(err)
	}
	got, err := net.FileListener(m.Files[0])
	m.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	go func() {
		c, err := net.Dial("tcp", tcp.Addr().String())
		if err == nil {
			c.Write([]byte("x"))
			c.Close()
		}
	}()
	c, err := got.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	one := make([]byte, 1)
	if _, err := io.ReadFull(c, one); err != nil || one[0] != 'x' {
		t.Fatalf("read through passed listener: %q %v", one, err)
	}
}

// TestCtrunc provokes MSG_CTRUNC with a control buffer too small: the fds
// that did arrive must be closed and ErrTruncated returned.
func TestCtrunc(t *testing.T) {
	for _, st := range sockTypes {
		for _, c := range []struct{ send, max int }{{3, 1}, {2, 1}, {10, 2}, {1, 0}, {fdpass.MaxFDsPerMessage, 100}} {
			t.Run(fmt.Sprintf("%s/send%d/max%d", st.name, c.send, c.max), func(t *testing.T) {
				testutil.CheckLeaks(t)
				a, b := pair(t, st.typ)
				_, w := pipes(t, c.send)
				if _, err := a.Send([]byte("x"), w...); err != nil {
					t.Fatal(err)
				}
				m, err := b.Recv(make([]byte, 1), c.max)
				if !errors.Is(err, fdpass.ErrTruncated) {
					m.Close()
					t.Fatalf("Recv: got %v, want ErrTruncated", err)
				}
				if fdpass.Retryable(err) {
					t.Errorf("truncation must not be retryable: %v", err)
				}
			})
		}
	}
}

// TestMsgTrunc cuts a packet's data short: its fds are closed too.
func TestMsgTrunc(t *testing.T) {
	for _, typ := range []int{unix.SOCK_SEQPACKET, unix.SOCK_DGRAM} {
		testutil.CheckLeaks(t)
		a, b := pair(t, typ)
		_, w := pipes(t, 2)
		if _, err := a.Send([]byte("0123456789"), w...); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Recv(make([]byte, 4), 2); !errors.Is(err, fdpass.ErrTruncated) {
			t.Fatalf("type %d: got %v, want ErrTruncated", typ, err)
		}
		// The socket still works for the next message.
		if _, err := a.Send([]byte("ok")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if m, err := b.Recv(buf, 0); err != nil || string(buf[:m.N]) != "ok" {
			t.Fatalf("after truncation: %q %v", buf[:m.N], err)
		}
	}
}

// TestKernelLimit shows the kernel's own limit: 254 fds in one sendmsg fail
// with EINVAL, which is why Send splits or refuses.
func TestKernelLimit(t *testing.T) {
	testutil.CheckLeaks(t)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	many := make([]int, fdpass.MaxFDsPerMessage+1)
	for i := range many {
		many[i] = fds[0]
	}
	err = unix.Sendmsg(fds[0], []byte{0}, unix.UnixRights(many...), nil, 0)
	if err != unix.EINVAL {
		t.Fatalf("sendmsg with %d fds: got %v, want EINVAL", len(many), err)
	}
	if err := unix.Sendmsg(fds[0], []byte{0}, unix.UnixRights(many[1:]...), nil, 0); err != nil {
		t.Fatalf("sendmsg with %d fds: %v", len(many)-1, err)
	}
	got, err := fdpass.NewConn(os.NewFile(uintptr(fds[1]), "x"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := got.Recv(make([]byte, 1), fdpass.MaxFDsPerMessage)
	if err != nil || len(m.Files) != fdpass.MaxFDsPerMessage {
		t.Fatalf("recv: %d fds, %v", len(m.Files), err)
	}
	m.Close()
	// got owns fds[1] now; the deferred unix.Close above then fails
	// harmlessly with EBADF, and the fd number is not reused meanwhile.
	got.Close()
}

// TestSplitStream sends more fds than one message can carry over a stream
// socket; RecvFull gets them all with the data intact, in order.
func TestSplitStream(t *testing.T) {
	testutil.CheckLeaks(t)
	a, b := pair(t, unix.SOCK_STREAM)
	const n = 600
	r, w := pipes(t, n)
	msg := []byte("0123456789")
	done := make(chan error, 1)
	go func() {
		_, err := a.Send(msg, w...)
		done <- err
	}()
	buf := make([]byte, len(msg))
	m, err := b.RecvFull(buf, 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, msg) || len(m.Files) != n {
		t.Fatalf("got %q with %d fds", buf, len(m.Files))
	}
	for _, i := range []int{0, 252, 253, 599} {
		m.Files[i].Write([]byte{'z'})
		one := make([]byte, 1)
		if _, err := io.ReadFull(r[i], one); err != nil {
			t.Fatalf("fd %d is not pipe %d: %v", i, i, err)
		}
	}
	// Too short a message cannot carry 600 fds (3 groups need 3 bytes).
	if _, err := a.Send([]byte("ab"), w...); !errors.Is(err, fdpass.ErrNeedData) {
		t.Fatalf("600 fds with 2 bytes: got %v, want ErrNeedData", err)
	}
}

// TestSplitRefusedOnPackets: packet sockets cannot split a message.
func TestSplitRefusedOnPackets(t *testing.T) {
	for _, typ := range []int{unix.SOCK_SEQPACKET, unix.SOCK_DGRAM} {
		testutil.CheckLeaks(t)
		a, b := pair(t, typ)
		_, w := pipes(t, fdpass.MaxFDsPerMessage+1)
		if _, err := a.Send([]byte("0123456789"), w...); !errors.Is(err, fdpass.ErrTooManyFDs) {
			t.Fatalf("got %v, want ErrTooManyFDs", err)
		}
		// Nothing was sent: the next message is the first to arrive.
		if _, err := a.Send([]byte("marker")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 16)
		m, err := b.Recv(buf, 300)
		if err != nil || string(buf[:m.N]) != "marker" || len(m.Files) != 0 {
			t.Fatalf("first message after a refused send: %q with %d fds, %v; want the marker alone", buf[:m.N], len(m.Files), err)
		}
	}
}

// TestConcurrentSplitSends checks that Send is atomic: split messages from
// several goroutines never interleave on a stream.
func TestConcurrentSplitSends(t *testing.T) {
	testutil.CheckLeaks(t)
	a, b := pair(t, unix.SOCK_STREAM)
	_, w := pipes(t, 300)
	const senders, each = 4, 5
	var wg sync.WaitGroup
	for s := 0; s < senders; s++ {
		wg.Add(1)
		go func(s int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				msg := bytes.Repeat([]byte{byte('a' + s)}, 8)
				if _, err := a.Send(msg, w...); err != nil {
					t.Error(err)
				}
			}
		}(s)
	}
	for i := 0; i < senders*each; i++ {
		buf := make([]byte, 8)
		m, err := b.RecvFull(buf, 300)
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Files) != 300 || bytes.Count(buf, buf[:1]) != 8 {
			t.Fatalf("message %d interleaved: %q with %d fds", i, buf, len(m.Files))
		}
		m.Close()
	}
	wg.Wait()
}

// TestConcurrentRecvFull: readers that share a stream each get whole
// split messages, never parts of two.
func TestConcurrentRecvFull(t *testing.T) {
	testutil.CheckLeaks(t)
	a, b := pair(t, unix.SOCK_STREAM)
	_, w := pipes(t, 300)
	const readers, each = 4, 5
	var wg sync.WaitGroup
	for r := 0; r < readers; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				buf := make([]byte, 8)
				m, err := b.RecvFull(buf, 300)
				if err != nil {
					t.Error(err)
					return
				}
				if len(m.Files) != 300 || bytes.Count(buf, buf[:1]) != 8 {
					t.Errorf("a reader got parts of two messages: %q with %d fds", buf, len(m.Files))
				}
				m.Close()
			}
		}()
	}
	for i := 0; i < readers*each; i++ {
		if _, err := a.Send(bytes.Repeat([]byte{byte('a' + i)}, 8), w...); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
}

func TestEOF(t *testing.T) {
	for _, typ := range []int{unix.SOCK_STREAM, unix.SOCK_SEQPACKET} {
		testutil.CheckLeaks(t)
		a, b := pair(t, typ)
		a.Close()
		if _, err := b.Recv(make([]byte, 4), 1); err != io.EOF {
			t.Fatalf("type %d: got %v, want io.EOF", typ, err)
		}
	}
	// A stream cut inside a message: the fds that came are closed.
	testutil.CheckLeaks(t)
	a, b := pair(t, unix.SOCK_STREAM)
	_, w := pipes(t, 3)
	if _, err := a.Send([]byte("ab"), w...); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if _, err := b.RecvFull(make([]byte, 4), 3); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("got %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestNeedData(t *testing.T) {
	testutil.CheckLeaks(t)
	a, _ := pair(t, unix.SOCK_SEQPACKET)
	_, w := pipes(t, 1)
	if _, err := a.Send(nil, w...); !errors.Is(err, fdpass.ErrNeedData) {
		t.Fatalf("got %v, want ErrNeedData", err)
	}
	if _, err := a.Send([]byte{1}, nil); err == nil {
		t.Fatal("sending a nil file succeeded")
	}
}

// TestBlockingModeKept: sending a file must not switch its shared file
// description to blocking mode, as (*os.File).Fd would.
func TestBlockingModeKept(t *testing.T) {
	testutil.CheckLeaks(t)
	a, b := pair(t, unix.SOCK_SEQPACKET)
	x, y := pair(t, unix.SOCK_STREAM) // non-blocking sockets
	if _, err := a.Send([]byte{1}, x.Socket().(*os.File)); err != nil {
		t.Fatal(err)
	}
	m, err := b.Recv(make([]byte, 1), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	_ = y
	rc, _ := x.Socket().SyscallConn()
	var fl int
	rc.Control(func(fd uintptr) { fl, _ = unix.FcntlInt(fd, unix.F_GETFL, 0) })
	if fl&unix.O_NONBLOCK == 0 {
		t.Fatal("Send switched the file to blocking mode")
	}
}

// TestDeadline proves Recv waits in the netpoller: a deadline ends it.
func TestDeadline(t *testing.T) {
	testutil.CheckLeaks(t)
	_, b := pair(t, unix.SOCK_SEQPACKET)
	b.SetDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := b.Recv(make([]byte, 1), 1)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("got %v, want a deadline error", err)
	}
	var oe *fdpass.OpError
	if !errors.As(err, &oe) || oe.Op != "recvmsg" {
		t.Fatalf("error %v is not an *OpError for recvmsg", err)
	}
}

// TestWouldBlock: a non-blocking fd that the netpoller does not know gives
// ErrWouldBlock instead of blocking or spinning.
func TestWouldBlock(t *testing.T) {
	testutil.CheckLeaks(t)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, err := fdpass.NewConn(os.NewFile(uintptr(fds[0]), "blocking"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer unix.Close(fds[1])
	unix.SetNonblock(fds[0], true) // behind the os.File's back
	_, err = a.Recv(make([]byte, 1), 1)
	if !errors.Is(err, fdpass.ErrWouldBlock) || !errors.Is(err, unix.EAGAIN) || !fdpass.Retryable(err) {
		t.Fatalf("got %v, want ErrWouldBlock wrapping EAGAIN", err)
	}
}

func TestCredentials(t *testing.T) {
	testutil.CheckLeaks(t)
	for _, st := range sockTypes {
		a, b := pair(t, st.typ)
		want := fdpass.Cred{PID: os.Getpid(), UID: os.Getuid(), GID: os.Getgid()}
		if st.typ != unix.SOCK_DGRAM {
			if got, err := b.PeerCred(); err != nil || got != want {
				t.Fatalf("%s: PeerCred = %+v, %v; want %+v", st.name, got, err, want)
			}
		}
		if err := b.SetPassCred(true); err != nil {
			t.Fatal(err)
		}
		_, w := pipes(t, 2)
		if _, err := a.SendCred([]byte("c"), nil, w...); err != nil {
			t.Fatal(err)
		}
		m, err := b.Recv(make([]byte, 1), 2)
		if err != nil {
			t.Fatal(err)
		}
		if m.Cred == nil || *m.Cred != want || len(m.Files) != 2 {
			t.Fatalf("%s: got cred %+v with %d fds, want %+v with 2", st.name, m.Cred, len(m.Files), want)
		}
		m.Close()
		// With SO_PASSCRED off, no credentials and no spare room.
		if err := b.SetPassCred(false); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Send([]byte("c"), w...); err != nil {
			t.Fatal(err)
		}
		m, err = b.Recv(make([]byte, 1), 2)
		if err != nil || m.Cred != nil {
			t.Fatalf("%s: passcred off: cred %+v, %v", st.name, m.Cred, err)
		}
		m.Close()
	}
}

// TestCredentialsForged: as a normal user the kernel refuses credentials
// that are not one's own (a pid not ours needs CAP_SYS_ADMIN).
func TestCredentialsForgedAsNobody(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CheckLeaks(t)
	peerCredAsNobody(t)
}

// peerCredAsNobody runs a child as nobody that connects to a socket of
// ours and sends its credentials; the kernel must report nobody's uid both
// through SO_PEERCRED and SCM_CREDENTIALS, and refuse a forged uid 0.
func peerCredAsNobody(t *testing.T) {
	uid, gid := testutil.Nobody(t)
	// t.TempDir's parent is private to root; nobody must reach the socket.
	dir, err := os.MkdirTemp("", "fdpass-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	path := filepath.Join(dir, "s")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	os.Chmod(path, 0o777)
	cmd := testutil.Child(t, "peer", uid, gid)
	cmd.Env = append(cmd.Env, "PEER_PATH="+path)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ln.SetDeadline(time.Now().Add(10 * time.Second)) // a child that failed never connects
	uc, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	c, err := fdpass.NewConn(uc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetPassCred(true); err != nil {
		t.Fatal(err)
	}
	pc, err := c.PeerCred()
	if err != nil || pc.UID != uid || pc.GID != gid || pc.PID != cmd.Process.Pid {
		t.Fatalf("PeerCred = %+v, %v; want uid %d gid %d pid %d", pc, err, uid, gid, cmd.Process.Pid)
	}
	m, err := c.Recv(make([]byte, 8), 0)
	if err != nil {
		t.Fatal(err)
	}
	if m.Cred == nil || m.Cred.UID != uid || m.Cred.PID != cmd.Process.Pid {
		t.Fatalf("SCM_CREDENTIALS = %+v; want uid %d pid %d", m.Cred, uid, cmd.Process.Pid)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
}

func childPeer() int {
	uc, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: os.Getenv("PEER_PATH"), Net: "unixpacket"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	c, err := fdpass.NewConn(uc)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	forged := &fdpass.Cred{PID: os.Getpid(), UID: 0, GID: 0}
	if _, err := c.SendCred([]byte("x"), forged); !errors.Is(err, unix.EPERM) {
		fmt.Fprintf(os.Stderr, "forged uid 0 as nobody: got %v, want EPERM\n", err)
		return 1
	}
	if _, err := c.SendCred([]byte("me"), nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestEMFILE: a receiver out of fds gets ErrFDLimit and no leaked fd; run
// in a child so that lowering RLIMIT_NOFILE does not touch the test binary.
func TestEMFILE(t *testing.T) {
	testutil.CheckLeaks(t)
	a, b, err := fdpass.Socketpair(unix.SOCK_SEQPACKET)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	bf := b.Socket().(*os.File)
	cmd := testutil.Child(t, "emfile", -1, -1, bf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	b.Close()
	_, w := pipes(t, 20)
	if _, err := a.Send([]byte("x"), w...); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
}

func childEMFILE() int {
	c, err := fdpass.NewConn(os.NewFile(3, "sock"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	before := len(testutil.OpenFDs())
	var lim unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	// Room for the ones open now and a few more, not for 20.
	lim.Cur = uint64(limitWithFree(4))
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	_, err = c.Recv(make([]byte, 1), 20)
	if !errors.Is(err, fdpass.ErrFDLimit) || !errors.Is(err, unix.EMFILE) || !fdpass.Retryable(err) {
		fmt.Fprintf(os.Stderr, "got %v, want ErrFDLimit wrapping EMFILE\n", err)
		return 1
	}
	if after := len(testutil.OpenFDs()); after != before {
		fmt.Fprintf(os.Stderr, "fd leak on EMFILE: %d fds before, %d after\n", before, after)
		return 1
	}
	return 0
}

// limitWithFree returns the lowest RLIMIT_NOFILE that leaves n fd numbers
// free below it (inherited fds can sit anywhere, leaving holes).
func limitWithFree(n int) int {
	open := testutil.OpenFDs()
	free, l := 0, 0
	for ; free < n; l++ {
		if _, ok := open[l]; !ok {
			free++
		}
	}
	return l
}

// TestTooManyRefs provokes ETOOMANYREFS: a sender whose in-flight fds
// exceed its RLIMIT_NOFILE. Root has CAP_SYS_RESOURCE and is exempt, so as
// root the child runs as nobody.
func TestTooManyRefs(t *testing.T) {
	testutil.CheckLeaks(t)
	// The kernel counts fds in flight per user, so other processes of the
	// same user (other test packages run as nobody at the same time) move
	// the point where ETOOMANYREFS comes, and can make it come before the
	// first send. As root, run the child as a uid nobody else has.
	uid, gid := -1, -1
	if os.Geteuid() == 0 {
		uid, gid = 2147480000+os.Getpid()%1000, 2147480000
	}
	cmd := testutil.Child(t, "toomanyrefs", uid, gid)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v %s", err, out)
	}
	t.Logf("%s", out)
}

func childTooManyRefs() int {
	var lim unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	lim.Cur = 32
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	a, b, err := fdpass.Socketpair(unix.SOCK_DGRAM)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	r, w, _ := os.Pipe()
	sent := 0
	for ; sent < 1000; sent++ {
		_, err = a.Send([]byte{1}, r, w)
		if err != nil {
			break
		}
	}
	if !errors.Is(err, fdpass.ErrTooManyRefs) || !errors.Is(err, unix.ETOOMANYREFS) || !fdpass.Retryable(err) {
		fmt.Fprintf(os.Stderr, "after %d sends: got %v, want ErrTooManyRefs\n", sent, err)
		return 1
	}
	if sent == 0 {
		// Nothing queued to receive: other processes of this uid hold
		// the fds in flight. Receiving would wait forever.
		fmt.Fprintf(os.Stderr, "ETOOMANYREFS before the first send: other processes of uid %d have %d or more fds in flight\n", os.Getuid(), lim.Cur)
		return 1
	}
	// Once the peer receives, sending works again: the error is one to wait on.
	m, err := b.Recv(make([]byte, 1), 2)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	m.Close()
	if _, err := a.Send([]byte{1}, r, w); err != nil {
		fmt.Fprintf(os.Stderr, "after draining one: %v\n", err)
		return 1
	}
	fmt.Println("ETOOMANYREFS after", sent, "messages")
	return 0
}

func TestOpErrorText(t *testing.T) {
	e := &fdpass.OpError{Op: "sendmsg", Addr: "/run/x.sock", Kind: fdpass.ErrTooManyRefs, Err: unix.ETOOMANYREFS}
	want := "fdpass: sendmsg /run/x.sock: too many fds in flight (ETOOMANYREFS): " + unix.ETOOMANYREFS.Error()
	if e.Error() != want {
		t.Fatalf("got %q\nwant %q", e.Error(), want)
	}
}

// TestNotUnix: NewConn refuses what is not a Unix socket, and takes
// ownership even then: a pipe's read end and a TCP socket it refuses are
// closed (the writer sees EPIPE, the TCP peer end of stream), and closing
// them again is an error.
func TestNotUnix(t *testing.T) {
	testutil.CheckLeaks(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := fdpass.NewConn(r); err == nil {
		t.Fatal("NewConn accepted a pipe")
	}
	if err := r.Close(); err == nil {
		t.Error("the pipe was still open after a failed NewConn")
	}
	if _, err := w.Write([]byte("x")); !errors.Is(err, unix.EPIPE) {
		t.Errorf("write to the pipe: %v, want EPIPE (no reader left)", err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	if _, err := fdpass.NewConn(c.(*net.TCPConn)); !errors.Is(err, unix.EAFNOSUPPORT) {
		t.Fatalf("NewConn on TCP: got %v, want EAFNOSUPPORT", err)
	}
	if err := c.Close(); err == nil {
		t.Error("the TCP socket was still open after a failed NewConn")
	}
	if n, err := peer.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("TCP peer read %d, %v, want end of stream", n, err)
	}
}
