// Package sharedfd is the I/O engine under porter's Listener and
// PacketConn, doing for a socket shared with other processes what Go's
// internal/poll.FD does for net: reference counts so that Close never
// frees an fd number under a running operation, waiting for readiness,
// and deadlines.
//
// The open file description of such a socket is shared with other
// processes (other holders of a broker socket, or a C program beside us),
// so an FD never changes its file status flags: a blocking holder keeps
// blocking. It waits with poll(2) on a thread of its own, woken through a
// private eventfd on Close or a deadline change, and then does the
// operation with MSG_DONTWAIT where one exists. Errors are net.ErrClosed,
// os.ErrDeadlineExceeded or an *os.SyscallError; callers wrap them in a
// *net.OpError.
package sharedfd

import (
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/porter-ipc/porter/internal/fdutil"
	"golang.org/x/sys/unix"
)

// FD is this process's own descriptor of a shared socket.
type FD struct {
	// Sysfd is the descriptor: valid until Close, and until every
	// operation in progress at Close has returned.
	Sysfd int
	// Local is the address the socket is bound to.
	Local unix.Sockaddr

	mu      sync.Mutex
	refs    int // 1 while open, plus one per operation in progress
	closing bool
	waiters map[int]struct{} // eventfds of blocked waits
	rdl     time.Time        // read (and accept) deadline
	wdl     time.Time        // write deadline

	inAccept atomic.Int32 // goroutines inside a possibly blocking accept(2)
}

// NewListener returns an FD on a close-on-exec copy of f, which must be a
// listening stream socket. The caller still owns f.
func NewListener(f *os.File) (*FD, error) {
	return newFD(f, func(fd int) error {
		acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		if err == nil && acc == 0 {
			err = unix.EINVAL
		}
		if err != nil {
			return os.NewSyscallError("getsockopt SO_ACCEPTCONN: not a listening socket", err)
		}
		return nil
	})
}

// NewPacket returns an FD on a close-on-exec copy of f, which must be a
// datagram socket. The caller still owns f.
func NewPacket(f *os.File) (*FD, error) {
	return newFD(f, func(fd int) error {
		typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		if err == nil && typ != unix.SOCK_DGRAM {
			err = unix.EPROTOTYPE
		}
		if err != nil {
			return os.NewSyscallError("getsockopt SO_TYPE: not a datagram socket", err)
		}
		return nil
	})
}

func newFD(f *os.File, check func(fd int) error) (*FD, error) {
	nfd, err := fdutil.DupCloexec(f)
	if err != nil {
		return nil, err
	}
	if err := check(nfd); err != nil {
		unix.Close(nfd)
		return nil, err
	}
	sa, err := unix.Getsockname(nfd)
	if err != nil {
		unix.Close(nfd)
		return nil, os.NewSyscallError("getsockname", err)
	}
	return &FD{Sysfd: nfd, Local: sa, refs: 1, waiters: map[int]struct{}{}}, nil
}

// incref starts an operation; it fails once Close has begun.
func (s *FD) incref() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return net.ErrClosed
	}
	s.refs++
	return nil
}

// decref ends an operation; the last one after Close closes the fd.
func (s *FD) decref() {
	s.mu.Lock()
	s.refs--
	last := s.refs == 0
	s.mu.Unlock()
	if last {
		unix.Close(s.Sysfd)
	}
}

func (s *FD) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Close marks s closed and wakes every blocked operation, which returns
// net.ErrClosed. The fd itself is closed when the last operation ends, so
// that its number is never reused under one still running. An Accept
// blocked inside accept(2) (it lost a race for a connection to another
// holder on a blocking socket) is woken by connecting to the socket:
// another holder may then see one empty connection. Close reports
// whether this call closed s (false when it was closed already).
func (s *FD) Close() bool {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return false
	}
	s.closing = true
	s.wakeLocked()
	s.mu.Unlock()
	s.unblockAccept()
	s.decref()
	return true
}

func (s *FD) wakeLocked() {
	one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
	for efd := range s.waiters {
		unix.Write(efd, one)
	}
}

// SetDeadline sets the read (and accept) deadline, the write deadline or
// both to t, waking blocked operations to see it; the zero t means none.
func (s *FD) SetDeadline(read, write bool, t time.Time) {
	s.mu.Lock()
	if read {
		s.rdl = t
	}
	if write {
		s.wdl = t
	}
	s.wakeLocked()
	s.mu.Unlock()
}

// wait blocks until fd has events, the deadline passes (read or write
// deadline as write says), or s is closed.
func (s *FD) wait(events int16, write bool) error {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return os.NewSyscallError("eventfd", err)
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		unix.Close(efd)
		return net.ErrClosed
	}
	s.waiters[efd] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.waiters, efd)
		s.mu.Unlock()
		unix.Close(efd)
	}()
	var buf [8]byte
	for {
		s.mu.Lock()
		closing, dl := s.closing, s.rdl
		if write {
			dl = s.wdl
		}
		s.mu.Unlock()
		if closing {
			return net.ErrClosed
		}
		timeout := -1
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return os.ErrDeadlineExceeded
			}
			timeout = int((d + time.Millisecond - 1) / time.Millisecond)
		}
		pfd := []unix.PollFd{{Fd: int32(s.Sysfd), Events: events}, {Fd: int32(efd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, timeout)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return os.NewSyscallError("poll", err)
		}
		if n == 0 {
			continue // the deadline is checked at the top
		}
		if pfd[1].Revents != 0 {
			unix.Read(efd, buf[:])
			continue
		}
		if pfd[0].Revents != 0 {
			return nil
		}
	}
}

// Accept waits for the next connection and returns its fd, non-blocking
// and close-on-exec, owned by the caller.
func (s *FD) Accept() (int, error) {
	if err := s.incref(); err != nil {
		return -1, err
	}
	defer s.decref()
	for {
		if err := s.wait(unix.POLLIN, false); err != nil {
			return -1, err
		}
		// Another holder may take the connection between poll and
		// accept; on a blocking description accept then blocks until
		// the next one (Close knows how to wake it).
		s.inAccept.Add(1)
		// Close sets closing under mu and then reads inAccept; this
		// does the reverse, so one of the two sees the other: either
		// Close wakes this accept(2), or this sees closing here.
		if s.isClosing() {
			s.inAccept.Add(-1)
			return -1, net.ErrClosed
		}
		nfd, _, err := unix.Accept4(s.Sysfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		s.inAccept.Add(-1)
		if err == nil {
			// Even when Close has begun: this is a client's connection
			// (or Close's own wake-up one, which the caller sees end at
			// once); closing it here would drop the client unanswered.
			return nfd, nil
		}
		if s.isClosing() {
			return -1, net.ErrClosed
		}
		switch err {
		case unix.EAGAIN, unix.EINTR, unix.ECONNABORTED:
		default:
			return -1, os.NewSyscallError("accept4", err)
		}
	}
}

// InAccept returns how many Accepts are inside accept(2) now, where a
// blocking description may keep them; for tests.
func (s *FD) InAccept() int { return int(s.inAccept.Load()) }

// Waiting returns how many operations are blocked waiting for
// readiness now; for tests.
func (s *FD) Waiting() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.waiters)
}

// unblockAccept connects to the listening socket until no Accept is left
// inside accept(2), for at most two seconds.
func (s *FD) unblockAccept() {
	if s.inAccept.Load() == 0 {
		return
	}
	var dst net.TCPAddr
	switch a := s.Local.(type) {
	case *unix.SockaddrInet4:
		dst = net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	case *unix.SockaddrInet6:
		dst = net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	default:
		return
	}
	if dst.IP.IsUnspecified() {
		if dst.IP.To4() != nil {
			dst.IP = net.IPv4(127, 0, 0, 1)
		} else {
			dst.IP = net.IPv6loopback
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for s.inAccept.Load() > 0 && time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", dst.String(), 200*time.Millisecond)
		if err != nil {
			return
		}
		// Wait for our accept to take it, or for another holder to.
		for i := 0; i < 20 && s.inAccept.Load() > 0; i++ {
			time.Sleep(5 * time.Millisecond)
		}
		c.Close()
	}
}

// ReadFrom reads one datagram into b.
func (s *FD) ReadFrom(b []byte) (int, unix.Sockaddr, error) {
	if err := s.incref(); err != nil {
		return 0, nil, err
	}
	defer s.decref()
	for {
		n, from, err := unix.Recvfrom(s.Sysfd, b, unix.MSG_DONTWAIT)
		switch err {
		case nil:
			return n, from, nil
		case unix.EAGAIN, unix.EINTR:
			if err := s.wait(unix.POLLIN, false); err != nil {
				return 0, nil, err
			}
		default:
			return 0, nil, os.NewSyscallError("recvfrom", err)
		}
	}
}

// WriteTo sends b as one datagram to sa.
func (s *FD) WriteTo(b []byte, sa unix.Sockaddr) error {
	if err := s.incref(); err != nil {
		return err
	}
	defer s.decref()
	for {
		err := unix.Sendto(s.Sysfd, b, unix.MSG_DONTWAIT, sa)
		switch err {
		case nil:
			return nil
		case unix.EAGAIN, unix.EINTR:
			if err := s.wait(unix.POLLOUT, true); err != nil {
				return err
			}
		default:
			return os.NewSyscallError("sendto", err)
		}
	}
}

// File returns a copy of the socket named name, close-on-exec, owned by
// the caller.
func (s *FD) File(name string) (*os.File, error) {
	if err := s.incref(); err != nil {
		return nil, err
	}
	defer s.decref()
	nfd, err := unix.FcntlInt(uintptr(s.Sysfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", err)
	}
	return os.NewFile(uintptr(nfd), name), nil
}
