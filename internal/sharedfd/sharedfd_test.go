package sharedfd

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// socket returns a blocking socket of type typ bound to 127.0.0.1 on a
// port the kernel picks, listening when typ is SOCK_STREAM, as the
// creator makes them: the caller owns it.
func socket(t *testing.T, typ int) *os.File {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "test")
	t.Cleanup(func() { f.Close() })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if typ == unix.SOCK_STREAM {
		if err := unix.Listen(fd, 16); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func localAddr(s *FD) string {
	a := s.Local.(*unix.SockaddrInet4)
	return (&net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}).String()
}

func blocking(t *testing.T, s *FD) bool {
	t.Helper()
	fl, err := unix.FcntlInt(uintptr(s.Sysfd), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fl&unix.O_NONBLOCK == 0
}

func TestNewChecksKind(t *testing.T) {
	testutil.CheckLeaks(t)
	st, dg := socket(t, unix.SOCK_STREAM), socket(t, unix.SOCK_DGRAM)
	if _, err := NewListener(dg); !errors.Is(err, unix.EINVAL) {
		t.Errorf("NewListener(datagram socket): %v, want EINVAL", err)
	}
	if _, err := NewPacket(st); !errors.Is(err, unix.EPROTOTYPE) {
		t.Errorf("NewPacket(stream socket): %v, want EPROTOTYPE", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if _, err := NewListener(r); !errors.Is(err, unix.ENOTSOCK) {
		t.Errorf("NewListener(pipe): %v, want ENOTSOCK", err)
	}
}

// TestAcceptClose: an Accept waiting for a connection returns
// net.ErrClosed once Close is called, the fd is closed then, and the
// shared description stays blocking throughout.
func TestAcceptClose(t *testing.T) {
	testutil.CheckLeaks(t)
	f := socket(t, unix.SOCK_STREAM)
	s, err := NewListener(f)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", localAddr(s))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	nfd, err := s.Accept()
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(nfd)
	done := make(chan error, 1)
	go func() {
		nfd, err := s.Accept()
		if err == nil {
			unix.Close(nfd)
		}
		done <- err
	}()
	testutil.WaitFor(t, "Accept to wait", func() bool { return s.Waiting() == 1 })
	if !blocking(t, s) {
		t.Fatal("Accept made the shared description non-blocking")
	}
	if !s.Close() {
		t.Fatal("first Close returned false")
	}
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if s.Close() {
		t.Fatal("second Close returned true")
	}
	if _, err := s.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept on a closed FD: %v", err)
	}
	if _, err := s.File("x"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("File on a closed FD: %v", err)
	}
}

// TestDeadlines: a deadline in the past fails at once; one set while an
// operation waits wakes it; the zero time clears it.
func TestDeadlines(t *testing.T) {
	testutil.CheckLeaks(t)
	ls, err := NewListener(socket(t, unix.SOCK_STREAM))
	if err != nil {
		t.Fatal(err)
	}
	defer ls.Close()
	ls.SetDeadline(true, false, time.Now().Add(-time.Second))
	if _, err := ls.Accept(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Accept past its deadline: %v", err)
	}
	ls.SetDeadline(true, false, time.Time{})

	ps, err := NewPacket(socket(t, unix.SOCK_DGRAM))
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	done := make(chan error, 1)
	go func() { _, _, err := ps.ReadFrom(make([]byte, 10)); done <- err }()
	testutil.WaitFor(t, "ReadFrom to wait", func() bool { return ps.Waiting() == 1 })
	ps.SetDeadline(false, true, time.Now()) // the write deadline: no effect on reads
	ps.SetDeadline(true, false, time.Now())
	if err := <-done; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("ReadFrom after its deadline: %v", err)
	}
	ps.SetDeadline(true, true, time.Time{})
	if err := ps.WriteTo([]byte("hi"), ps.Local); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	n, from, err := ps.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "hi" {
		t.Fatalf("ReadFrom = %q, %v", buf[:n], err)
	}
	if from.(*unix.SockaddrInet4).Port != ps.Local.(*unix.SockaddrInet4).Port {
		t.Fatalf("datagram from %v, want %v", from, ps.Local)
	}
	if !blocking(t, ps) {
		t.Fatal("ReadFrom or WriteTo made the shared description non-blocking")
	}
}

// TestCloseWaitsForOperations: the fd stays open until the last
// operation in progress at Close ends, so that its number is never reused
// under it.
func TestCloseWaitsForOperations(t *testing.T) {
	testutil.CheckLeaks(t)
	s, err := NewPacket(socket(t, unix.SOCK_DGRAM))
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(s.Sysfd, &st); err != nil {
		t.Fatal(err)
	}
	if err := s.incref(); err != nil { // an operation in progress
		t.Fatal(err)
	}
	s.Close()
	if err := s.incref(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("incref after Close: %v", err)
	}
	var now unix.Stat_t
	if err := unix.Fstat(s.Sysfd, &now); err != nil || now.Ino != st.Ino {
		t.Fatalf("fd closed under an operation in progress (fstat: %v)", err)
	}
	s.decref()
	if err := unix.Fstat(s.Sysfd, &now); err == nil && now.Ino == st.Ino {
		t.Fatal("fd still open after the last operation ended")
	}
}

// TestCloseUnblocksAcceptInKernel: an Accept that lost a connection to
// another holder of a blocking socket blocks inside accept(2); Close
// wakes it by connecting to the socket.
func TestCloseUnblocksAcceptInKernel(t *testing.T) {
	testutil.CheckLeaks(t)
	s, err := NewListener(socket(t, unix.SOCK_STREAM))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		for {
			nfd, err := s.Accept()
			if err != nil {
				done <- err
				return
			}
			unix.Close(nfd)
		}
	}()
	// The other holder: a blocking accept loop on the same description,
	// as a C daemon would run. When it takes a connection after our poll
	// saw it, our accept(2) blocks (seen twice in a row with no
	// connection made in between).
	testutil.BlockingHolder(t, s.Sysfd, localAddr(s))
	testutil.WaitBlockedInAccept(t, s.InAccept, localAddr(s))
	s.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not wake an Accept blocked in accept(2)")
	}
}
