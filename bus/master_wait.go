package bus

import (
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The master's loop waits for its epoll set through Go's netpoller: the
// set's fd is registered with the runtime's poller like a socket, and
// the loop parks its goroutine until the set has events instead of
// blocking in epoll_wait. A goroutine blocked in a system call keeps its
// P in the syscall state; the runtime's sysmon takes the P back after
// 20 µs and starts a thread to hold it, which costs a thread wake-up per
// idle spell and keeps sysmon itself polling every 20 µs: in a profile
// of BenchmarkBusScaleEmpty sysmon alone was a sixth of the master's
// CPU. A parked goroutine instead lets the runtime sleep in its own
// epoll_wait. Master CPU per op of that benchmark, medians of 5
// interleaved runs: 103 µs blocking, 85 µs parked; BenchmarkBusJoin
// (with the join path's own savings) 71 -> 56 µs.
type epollSet struct {
	fd       int
	f        *os.File // owns fd
	rc       syscall.RawConn
	polled   bool // the runtime polls f; else block in epoll_wait
	deadline bool // a read deadline is set on f
}

// newEpollSet makes the master's epoll set, non-blocking and registered
// with the runtime's poller when the runtime takes it.
func newEpollSet() (*epollSet, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	// Non-blocking, os.NewFile registers it with the runtime's poller;
	// epoll_wait itself heeds only its timeout.
	nb := unix.SetNonblock(fd, true) == nil
	e := &epollSet{fd: fd, f: os.NewFile(uintptr(fd), "epoll")}
	e.rc, err = e.f.SyscallConn()
	// A file the runtime does not poll takes no deadline.
	e.polled = nb && err == nil && e.f.SetReadDeadline(time.Time{}) == nil
	return e, nil
}

// wait waits up to timeout ms (-1: without limit) for events, as
// epoll_wait does; 0 events on timeout.
func (e *epollSet) wait(events []unix.EpollEvent, timeout int) (int, error) {
	if !e.polled || timeout == 0 { // 0: a deadline now would not even look
		return unix.EpollWait(e.fd, events, timeout)
	}
	switch {
	case timeout >= 0:
		e.f.SetReadDeadline(time.Now().Add(time.Duration(timeout) * time.Millisecond))
		e.deadline = true
	case e.deadline:
		e.f.SetReadDeadline(time.Time{})
		e.deadline = false
	}
	var n int
	var werr error
	err := e.rc.Read(func(fd uintptr) bool {
		n, werr = unix.EpollWait(int(fd), events, 0)
		return n > 0 || werr != nil
	})
	if err != nil {
		if os.IsTimeout(err) {
			return 0, nil
		}
		return 0, err
	}
	return n, werr
}

// close closes the set.
func (e *epollSet) close() error { return e.f.Close() }
