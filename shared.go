package porter

import (
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/porter-ipc/porter/broker"
	"github.com/porter-ipc/porter/internal/sharedfd"
	"golang.org/x/sys/unix"
)

// shared is what Listener and PacketConn have in common: this process's
// descriptor of a socket other processes may share, and the broker
// reference that Close gives back.
type shared struct {
	fd      *sharedfd.FD
	release func() error // releases the broker reference, or nil
	token   broker.Token

	closeOnce sync.Once
	closeErr  error
}

func (s *shared) sharedPart() *shared { return s }

// close closes this process's descriptor, then releases the reference;
// an error is the release's, as a *net.OpError with Op "close".
func (s *shared) close(network string, addr net.Addr) error {
	s.closeOnce.Do(func() {
		s.fd.Close()
		if s.release != nil {
			if err := s.release(); err != nil {
				s.closeErr = &net.OpError{Op: "close", Net: network, Addr: addr, Err: err}
			}
		}
	})
	return s.closeErr
}

// tokenString is the reference's token, or "" without one.
func (s *shared) tokenString() string {
	if s.release == nil {
		return ""
	}
	return s.token.String()
}

// Listener is a TCP listener on a socket that other processes may share
// (a socket from the broker or from LISTEN_FDS). Unlike the listener of
// net.FileListener it never puts the shared open file description into
// non-blocking mode, so a blocking C program accepting on the same socket
// keeps working. Accept waits with poll(2) on a thread of its own. Close
// releases the broker reference, if the listener came from the broker.
type Listener struct {
	shared
	addr net.Addr
}

// FileListener returns a Listener on a copy of f, which must be a listening
// stream socket. f's file status flags are left as they are; the caller
// still owns f.
func FileListener(f *os.File) (*Listener, error) {
	fd, err := sharedfd.NewListener(f)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: "tcp", Err: err}
	}
	return &Listener{shared: shared{fd: fd}, addr: sockaddrToTCP(fd.Local)}, nil
}

// Accept waits for and returns the next connection, a *net.TCPConn for
// TCP (its own file description: non-blocking, in Go's netpoller).
func (l *Listener) Accept() (net.Conn, error) {
	nfd, err := l.fd.Accept()
	if err != nil {
		return nil, l.opErr("accept", err)
	}
	f := os.NewFile(uintptr(nfd), "tcp")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, l.opErr("accept", err)
	}
	return c, nil
}

// Close stops listening in this process and releases the broker
// reference. Other holders keep the socket, so queued connections stay
// for them. If an Accept is blocked inside accept(2) (it lost a race for
// a connection to another holder on a blocking socket), Close wakes it by
// connecting to the socket itself: another holder may then see one empty
// connection.
func (l *Listener) Close() error { return l.close("tcp", l.addr) }

// Token returns the broker token of the listener's reference, or "" when
// it did not come from the broker.
func (l *Listener) Token() string { return l.tokenString() }

// Addr returns the address the socket is bound to.
func (l *Listener) Addr() net.Addr { return l.addr }

// SetDeadline sets the deadline for Accept; the zero time means none.
func (l *Listener) SetDeadline(t time.Time) error {
	l.fd.SetDeadline(true, false, t)
	return nil
}

// File returns a copy of the socket, close-on-exec, owned by the caller.
func (l *Listener) File() (*os.File, error) { return l.fd.File("tcp") }

func (l *Listener) opErr(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Addr: l.addr, Err: err}
}

// PacketConn is a UDP socket that other processes may share. Like Listener
// it never changes the shared file description's blocking mode: reads and
// writes use MSG_DONTWAIT and wait with poll(2). Close releases the broker
// reference, if the socket came from the broker.
type PacketConn struct {
	shared
	addr net.Addr
}

// FilePacketConn returns a PacketConn on a copy of f, a datagram socket;
// f's flags are left alone and the caller still owns f.
func FilePacketConn(f *os.File) (*PacketConn, error) {
	fd, err := sharedfd.NewPacket(f)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: "udp", Err: err}
	}
	return &PacketConn{shared: shared{fd: fd}, addr: sockaddrToUDP(fd.Local)}, nil
}

// ReadFrom reads one datagram into b.
func (c *PacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, from, err := c.fd.ReadFrom(b)
	if err != nil {
		return 0, nil, c.opErr("read", nil, err)
	}
	return n, sockaddrToUDP(from), nil
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
	if err := c.fd.WriteTo(b, sa); err != nil {
		return 0, c.opErr("write", addr, err)
	}
	return len(b), nil
}

func (c *PacketConn) is4() bool {
	ua, _ := c.addr.(*net.UDPAddr)
	return ua != nil && ua.IP.To4() != nil
}

// Close closes this process's copy and releases the broker reference.
func (c *PacketConn) Close() error { return c.close("udp", c.addr) }

// Token returns the broker token of the reference, or "" when it did not
// come from the broker.
func (c *PacketConn) Token() string { return c.tokenString() }

// LocalAddr returns the address the socket is bound to.
func (c *PacketConn) LocalAddr() net.Addr { return c.addr }

// SetDeadline sets the read and write deadlines.
func (c *PacketConn) SetDeadline(t time.Time) error { c.fd.SetDeadline(true, true, t); return nil }

// SetReadDeadline sets the read deadline.
func (c *PacketConn) SetReadDeadline(t time.Time) error { c.fd.SetDeadline(true, false, t); return nil }

// SetWriteDeadline sets the write deadline.
func (c *PacketConn) SetWriteDeadline(t time.Time) error {
	c.fd.SetDeadline(false, true, t)
	return nil
}

// File returns a copy of the socket, close-on-exec, owned by the caller.
func (c *PacketConn) File() (*os.File, error) { return c.fd.File("udp") }

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
