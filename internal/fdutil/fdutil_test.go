package fdutil_test

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/porter-ipc/porter/internal/fdutil"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// TestDupCloexec: the duplicate is the same socket, close-on-exec, and
// making it leaves the original non-blocking.
func TestDupCloexec(t *testing.T) {
	testutil.CheckLeaks(t)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	x := os.NewFile(uintptr(fds[0]), "x")
	defer x.Close()
	yf := os.NewFile(uintptr(fds[1]), "y")
	y, err := net.FileConn(yf)
	yf.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer y.Close()
	nfd, err := fdutil.DupCloexec(x)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(nfd)
	if fl, err := unix.FcntlInt(uintptr(nfd), unix.F_GETFD, 0); err != nil || fl&unix.FD_CLOEXEC == 0 {
		t.Errorf("duplicate's fd flags %#x %v, want FD_CLOEXEC", fl, err)
	}
	if fl, err := unix.FcntlInt(uintptr(nfd), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK == 0 {
		t.Errorf("status flags %#x %v after DupCloexec, want O_NONBLOCK kept", fl, err)
	}
	if _, err := unix.Write(nfd, []byte("dup")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 3)
	n, err := y.Read(buf)
	if err != nil || string(buf[:n]) != "dup" {
		t.Errorf("read through the peer: %q %v, want the duplicate's write", buf[:n], err)
	}
}

// TestControlAndNumber: Control and Number reach the descriptor without
// making it blocking, pass fn's error through, and fail on a closed or
// nil file.
func TestControlAndNumber(t *testing.T) {
	testutil.CheckLeaks(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := unix.SetNonblock(int(w.Fd()), true); err != nil { // Fd: w's own mode does not matter here
		t.Fatal(err)
	}
	n, err := fdutil.Number(r)
	if err != nil {
		t.Fatal(err)
	}
	var st1, st2 unix.Stat_t
	if err := unix.Fstat(n, &st1); err != nil {
		t.Fatal(err)
	}
	if err := r.SetReadDeadline(time.Time{}); err != nil { // r is in the netpoller: non-blocking
		t.Fatal(err)
	}
	sentinel := errors.New("from fn")
	err = fdutil.Control(r, func(fd int) error {
		if fd != n {
			t.Errorf("Control's fd %d, Number's %d", fd, n)
		}
		if err := unix.Fstat(fd, &st2); err != nil {
			t.Error(err)
		}
		return sentinel
	})
	if err != sentinel {
		t.Errorf("Control returned %v, want fn's error", err)
	}
	if st1.Ino != st2.Ino {
		t.Errorf("Control's fd is another file")
	}
	if fl, err := unix.FcntlInt(uintptr(n), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK == 0 {
		t.Errorf("status flags %#x %v after Number and Control, want O_NONBLOCK kept", fl, err)
	}
	r.Close()
	if n, err := fdutil.Number(r); err == nil {
		t.Errorf("Number of a closed file: %d, want an error", n)
	}
	var nilFile *os.File
	if err := fdutil.Control(nilFile, func(int) error { t.Error("fn called for a nil file"); return nil }); !errors.Is(err, os.ErrInvalid) {
		t.Errorf("Control of a nil file: %v, want os.ErrInvalid", err)
	}
}
