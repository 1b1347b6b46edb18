package bus

import (
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/porter-ipc/porter/internal/testutil"
)

// TestMasterWaitParks: an idle master's loop goroutine is parked in the
// runtime's netpoller ("IO wait"), not blocked in an epoll_wait system
// call ("syscall"), which would have sysmon hand its P to a fresh thread
// after every idle spell (master_wait.go); and it still serves.
func TestMasterWaitParks(t *testing.T) {
	m := startMaster(t, nil)
	if !m.eps.polled {
		t.Fatal("the master's epoll set is not polled by the runtime")
	}
	// parked: every master loop of the process (this test's, and any
	// another test left) waits in the netpoller.
	parked := func() bool {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		loops := 0
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "(*masterState).loop") {
				loops++
				if head, _, _ := strings.Cut(g, "\n"); !strings.Contains(head, "[IO wait") {
					return false
				}
			}
		}
		return loops > 0
	}
	testutil.WaitFor(t, "the idle loop parked in IO wait", parked)
	r := join(t, m.Addr(), 0, "wait")
	if r.addr < 2 {
		t.Fatalf("WELCOME address %d", r.addr)
	}
	testutil.WaitFor(t, "the loop parked again after the join", parked)
}

// TestEpollSetWait: the set's wait returns 0 events on timeout, and the
// ready events (here the wake eventfd's) at once, with or without a
// timeout, as epoll_wait does.
func TestEpollSetWait(t *testing.T) {
	testutil.CheckLeaks(t)
	e, err := newEpollSet()
	if err != nil {
		t.Fatal(err)
	}
	defer e.close()
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	if err := unix.EpollCtl(e.fd, unix.EPOLL_CTL_ADD, efd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(efd)}); err != nil {
		t.Fatal(err)
	}
	events := make([]unix.EpollEvent, 4)
	if n, err := e.wait(events, 5); n != 0 || err != nil {
		t.Fatalf("wait on an idle set: %d events, %v; want 0 on timeout", n, err)
	}
	one := [8]byte{1}
	if _, err := unix.Write(efd, one[:]); err != nil {
		t.Fatal(err)
	}
	for _, timeout := range []int{-1, 1000, 0} {
		n, err := e.wait(events, timeout)
		if err != nil || n != 1 || events[0].Fd != int32(efd) {
			t.Fatalf("wait(%d) with the eventfd readable: %d events %v, %v", timeout, n, events[:n], err)
		}
	}
}
