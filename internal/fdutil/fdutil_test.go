package fdutil_test

import (
	"net"
	"os"
	"testing"

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
