package porter

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/porter-ipc/porter/broker"
	"github.com/porter-ipc/porter/internal/fdutil"
	"golang.org/x/sys/unix"
)

// sharedFD is our own descriptor of a socket whose open file description
// other processes share. It never changes the description's file status
// flags: a blocking C holder beside us keeps blocking. We wait for
// readiness with poll(2) in a thread of our own, woken through a private
// eventfd on Close or a deadline change, and then do the operation with
// MSG_DONTWAIT where one exists.
type sharedFD struct {
	fd int

	mu      sync.Mutex
	refs    int // 1 while open, plus one per operation in progress
	closing bool
	waiters map[int]struct{} // eventfds of blocked waits
	rdl     time.Time        // read (and accept) deadline
	wdl     time.Time        // write deadline

	inAccept atomic.Int32 // goroutines inside a possibly blocking accept(2)
}

func newSharedFD(f *os.File) (*sharedFD, error) {
	nfd, err := fdutil.DupCloexec(f)
	if err != nil {
		return nil, err
	}
	return &sharedFD{fd: nfd, refs: 1, waiters: map[int]struct{}{}}, nil
}

// incref starts an operation; it fails once Close has begun.
func (s *sharedFD) incref() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return net.ErrClosed
	}
	s.refs++
	return nil
}

// decref ends an operation; the last one after Close closes the fd.
func (s *sharedFD) decref() {
	s.mu.Lock()
	s.refs--
	last := s.refs == 0
	s.mu.Unlock()
	if last {
		unix.Close(s.fd)
	}
}

// close marks s closed and wakes every blocked wait. The fd itself is
// closed when the last operation ends, so that its number is never reused
// under an operation still running.
func (s *sharedFD) close() bool {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return false
	}
	s.closing = true
	s.wakeLocked()
	s.mu.Unlock()
	s.decref()
	return true
}

func (s *sharedFD) wakeLocked() {
	one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
	for efd := range s.waiters {
		unix.Write(efd, one)
	}
}

func (s *sharedFD) setDeadline(read, write bool, t time.Time) {
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
func (s *sharedFD) wait(events int16, write bool) error {
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
		pfd := []unix.PollFd{{Fd: int32(s.fd), Events: events}, {Fd: int32(efd), Events: unix.POLLIN}}
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

// Listener is a TCP listener on a socket that other processes may share
// (a socket from the broker or from LISTEN_FDS). Unlike the listener of
// net.FileListener it never puts the shared open file description into
// non-blocking mode, so a blocking C program accepting on the same socket
// keeps working. Accept waits with poll(2) on a thread of its own. Close
// releases the broker reference, if the listener came from the broker.
type Listener struct {
	s       *sharedFD
	addr    net.Addr
	release func() error // releases the broker reference, or nil
	token   broker.Token

	closeOnce sync.Once
	closeErr  error
}

// FileListener returns a Listener on a copy of f, which must be a listening
// stream socket. f's file status flags are left as they are; the caller
// still owns f.
func FileListener(f *os.File) (*Listener, error) {
	s, err := newSharedFD(f)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: "tcp", Err: err}
	}
	acc, err := unix.GetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err == nil && acc == 0 {
		err = unix.EINVAL
	}
	if err != nil {
		unix.Close(s.fd)
		return nil, &net.OpError{Op: "listen", Net: "tcp", Err: os.NewSyscallError("getsockopt SO_ACCEPTCONN: not a listening socket", err)}
	}
	sa, err := unix.Getsockname(s.fd)
	if err != nil {
		unix.Close(s.fd)
		return nil, &net.OpError{Op: "listen", Net: "tcp", Err: os.NewSyscallError("getsockname", err)}
	}
	return &Listener{s: s, addr: sockaddrToTCP(sa)}, nil
}

// Accept waits for and returns the next connection, a *net.TCPConn for
// TCP (its own file description: non-blocking, in Go's netpoller).
func (l *Listener) Accept() (net.Conn, error) {
	if err := l.s.incref(); err != nil {
		return nil, l.opErr("accept", err)
	}
	defer l.s.decref()
	for {
		if err := l.s.wait(unix.POLLIN, false); err != nil {
			return nil, l.opErr("accept", err)
		}
		// Another holder may take the connection between poll and
		// accept; on a blocking description accept then blocks until
		// the next one (Close knows how to wake it).
		l.s.inAccept.Add(1)
		nfd, _, err := unix.Accept4(l.s.fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		l.s.inAccept.Add(-1)
		if l.s.isClosing() {
			if err == nil {
				unix.Close(nfd)
			}
			return nil, l.opErr("accept", net.ErrClosed)
		}
		switch err {
		case nil:
		case unix.EAGAIN, unix.EINTR, unix.ECONNABORTED:
			continue
		default:
			return nil, l.opErr("accept", os.NewSyscallError("accept4", err))
		}
		f := os.NewFile(uintptr(nfd), "tcp")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, l.opErr("accept", err)
		}
		return c, nil
	}
}

func (s *sharedFD) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Close stops listening in this process and releases the broker
// reference. Other holders keep the socket, so queued connections stay
// for them. If an Accept is blocked inside accept(2) (it lost a race for
// a connection to another holder on a blocking socket), Close wakes it by
// connecting to the socket itself: another holder may then see one empty
// connection.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() {
		l.s.close()
		l.unblockAccept()
		if l.release != nil {
			l.closeErr = l.release()
		}
	})
	return l.closeErr
}

func (l *Listener) unblockAccept() {
	if l.s.inAccept.Load() == 0 {
		return
	}
	ta, _ := l.addr.(*net.TCPAddr)
	if ta == nil {
		return
	}
	dst := *ta
	if dst.IP.IsUnspecified() {
		if dst.IP.To4() != nil {
			dst.IP = net.IPv4(127, 0, 0, 1)
		} else {
			dst.IP = net.IPv6loopback
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for l.s.inAccept.Load() > 0 && time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", dst.String(), 200*time.Millisecond)
		if err != nil {
			return
		}
		// Wait for our accept to take it, or for another holder to.
		for i := 0; i < 20 && l.s.inAccept.Load() > 0; i++ {
			time.Sleep(5 * time.Millisecond)
		}
		c.Close()
	}
}

// Addr returns the address the socket is bound to.
func (l *Listener) Addr() net.Addr { return l.addr }

// SetDeadline sets the deadline for Accept; the zero time means none.
func (l *Listener) SetDeadline(t time.Time) error {
	l.s.setDeadline(true, false, t)
	return nil
}

// File returns a copy of the socket, close-on-exec, owned by the caller.
func (l *Listener) File() (*os.File, error) { return l.s.file("tcp") }

func (s *sharedFD) file(name string) (*os.File, error) {
	if err := s.incref(); err != nil {
		return nil, err
	}
	defer s.decref()
	nfd, err := unix.FcntlInt(uintptr(s.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", err)
	}
	return os.NewFile(uintptr(nfd), name), nil
}

func (l *Listener) opErr(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Addr: l.addr, Err: err}
}

// PacketConn is a UDP socket that other processes may share. Like Listener
// it never changes the shared file description's blocking mode: reads and
// writes use MSG_DONTWAIT and wait with poll(2). Close releases the broker
// reference, if the socket came from the broker.
type PacketConn struct {
	s       *sharedFD
	addr    net.Addr
	release func() error
	token   broker.Token

	closeOnce sync.Once
	closeErr  error
}

// FilePacketConn returns a PacketConn on a copy of f, a datagram socket;
// f's flags are left alone and the caller still owns f.
func FilePacketConn(f *os.File) (*PacketConn, error) {
	s, err := newSharedFD(f)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: "udp", Err: err}
	}
	typ, err := unix.GetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err == nil && typ != unix.SOCK_DGRAM {
		err = unix.EPROTOTYPE
	}
	if err != nil {
		unix.Close(s.fd)
		return nil, &net.OpError{Op: "listen", Net: "udp", Err: os.NewSyscallError("getsockopt SO_TYPE: not a datagram socket", err)}
	}
	sa, err := unix.Getsockname(s.fd)
	if err != nil {
		unix.Close(s.fd)
		return nil, &net.OpError{Op: "listen", Net: "udp", Err: os.NewSyscallError("getsockname", err)}
	}
	return &PacketConn{s: s, addr: sockaddrToUDP(sa)}, nil
}

// ReadFrom reads one datagram into b.
func (c *PacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	if err := c.s.incref(); err != nil {
		return 0, nil, c.opErr("read", nil, err)
	}
	defer c.s.decref()
	for {
		n, from, err := unix.Recvfrom(c.s.fd, b, unix.MSG_DONTWAIT)
		switch err {
		case nil:
			return n, sockaddrToUDP(from), nil
		case unix.EAGAIN, unix.EINTR:
			if err := c.s.wait(unix.POLLIN, false); err != nil {
				return 0, nil, c.opErr("read", nil, err)
			}
		default:
			return 0, nil, c.opErr("read", nil, os.NewSyscallError("recvfrom", err))
		}
	}
}

// WriteTo sends b as one datagram to addr, a *net.UDPAddr.
func (c *PacketConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, c.opErr("write", addr, syscall.EINVAL)
	}
	var sa unix.Sockaddr
	if ip4 := ua.IP.To4(); ip4 != nil && c.is4() {
		sa = &unix.SockaddrInet4{Port: ua.Port, Addr: [4]byte(ip4)}
	} else {
		s6 := &unix.SockaddrInet6{Port: ua.Port}
		copy(s6.Addr[:], ua.IP.To16())
		sa = s6
	}
	if err := c.s.incref(); err != nil {
		return 0, c.opErr("write", addr, err)
	}
	defer c.s.decref()
	for {
		err := unix.Sendto(c.s.fd, b, unix.MSG_DONTWAIT, sa)
		switch err {
		case nil:
			return len(b), nil
		case unix.EAGAIN, unix.EINTR:
			if err := c.s.wait(unix.POLLOUT, true); err != nil {
				return 0, c.opErr("write", addr, err)
			}
		default:
			return 0, c.opErr("write", addr, os.NewSyscallError("sendto", err))
		}
	}
}

func (c *PacketConn) is4() bool {
	ua, _ := c.addr.(*net.UDPAddr)
	return ua != nil && ua.IP.To4() != nil
}

// Close closes this process's copy and releases the broker reference.
func (c *PacketConn) Close() error {
	c.closeOnce.Do(func() {
		c.s.close()
		if c.release != nil {
			c.closeErr = c.release()
		}
	})
	return c.closeErr
}

// LocalAddr returns the address the socket is bound to.
func (c *PacketConn) LocalAddr() net.Addr { return c.addr }

// SetDeadline sets the read and write deadlines.
func (c *PacketConn) SetDeadline(t time.Time) error { c.s.setDeadline(true, true, t); return nil }

// SetReadDeadline sets the read deadline.
func (c *PacketConn) SetReadDeadline(t time.Time) error { c.s.setDeadline(true, false, t); return nil }

// SetWriteDeadline sets the write deadline.
func (c *PacketConn) SetWriteDeadline(t time.Time) error { c.s.setDeadline(false, true, t); return nil }

// File returns a copy of the socket, close-on-exec, owned by the caller.
func (c *PacketConn) File() (*os.File, error) { return c.s.file("udp") }

func (c *PacketConn) opErr(op string, addr net.Addr, err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = os.ErrDeadlineExceeded
	}
	return &net.OpError{Op: op, Net: "udp", Source: c.addr, Addr: addr, Err: err}
}

func sockaddrToTCP(sa unix.Sockaddr) net.Addr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]).To16(), Port: a.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	}
	return nil
}

func sockaddrToUDP(sa unix.Sockaddr) net.Addr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.UDPAddr{IP: net.IP(a.Addr[:]).To16(), Port: a.Port}
	case *unix.SockaddrInet6:
		return &net.UDPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	}
	return nil
}
