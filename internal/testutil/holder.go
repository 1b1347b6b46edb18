package testutil

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BlockingHolder runs a second holder of the listening TCP socket fd, as a
// C daemon would: a blocking accept(2) loop on a duplicate of fd that
// closes whatever it accepts. When the test ends it is stopped by
// connecting to addr until the loop sees the stop (an Accept of the
// caller's that is still blocked may take some of those first).
func BlockingHolder(t testing.TB, fd int, addr string) {
	t.Helper()
	other, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !stop.Load() {
			if nfd, _, err := unix.Accept4(other, unix.SOCK_CLOEXEC); err == nil {
				unix.Close(nfd)
			}
		}
	}()
	t.Cleanup(func() {
		stop.Store(true)
		for {
			if c, err := net.Dial("tcp", addr); err == nil {
				c.Close()
			}
			select {
			case <-done:
				unix.Close(other)
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	})
}

// WaitBlockedInAccept connects to addr until a BlockingHolder wins a
// connection that the caller's poll saw, so that the caller's Accept
// blocks inside accept(2): inAccept (how many Accepts are in accept(2)
// now) must read 1 twice in a row with no connection made in between.
func WaitBlockedInAccept(t testing.TB, inAccept func() int, addr string) {
	t.Helper()
	seen := 0
	WaitFor(t, "Accept to block in accept(2)", func() bool {
		if inAccept() == 1 {
			seen++
			return seen == 2
		}
		seen = 0
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
		}
		return false
	})
}
