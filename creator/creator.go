// Package creator is the unprivileged side of porter-creator: it starts the
// privileged socket creator (or talks to one already running over a Unix
// socket) and turns its BIND10 wire protocol (docs/protocol-creator.md)
// into bound sockets as *os.File values and typed errors.
//
// A Client serialises its callers: the protocol has one request in flight.
// Every socket it returns belongs to the caller, is close-on-exec, blocking,
// bound and, for TCP, not yet listening.
package creator

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/porter-ipc/porter/fdpass"
	"golang.org/x/sys/unix"
)

// Proto is the socket type byte of a request: TCP or UDP. The broker
// uses this type as its own (broker.Proto), with the same bytes on its wire.
type Proto byte

// The socket types the creator makes.
const (
	UDP Proto = 'U' // SOCK_DGRAM
	TCP Proto = 'T' // SOCK_STREAM
)

// NetAddr returns ap as the net.Addr of p's kind: *net.TCPAddr or
// *net.UDPAddr (nil for an unknown p).
func (p Proto) NetAddr(ap netip.AddrPort) net.Addr {
	switch p {
	case TCP:
		return net.TCPAddrFromAddrPort(ap)
	case UDP:
		return net.UDPAddrFromAddrPort(ap)
	}
	return nil
}

// String returns "udp" or "tcp", as in socket URLs.
func (p Proto) String() string {
	switch p {
	case UDP:
		return "udp"
	case TCP:
		return "tcp"
	}
	return fmt.Sprintf("proto(%#x)", byte(p))
}

// Error is a request the creator answered with failure ('E'): socket(2),
// or bind(2) or a socket option, failed with Errno. The creator goes on
// serving after it.
type Error struct {
	Op    string // "socket" or "bind"
	Proto Proto
	Addr  netip.AddrPort
	Errno syscall.Errno
}

// Error names the step, the socket, and the errno with its text and name.
func (e *Error) Error() string {
	return fmt.Sprintf("creator: %s %s %s: %v (%s)", e.Op, e.Proto, e.Addr, e.Errno.Error(), unix.ErrnoName(e.Errno))
}

// Unwrap returns Errno, so errors.Is(err, syscall.EACCES) works.
func (e *Error) Unwrap() error { return e.Errno }

// ErrClosed is wrapped by every error that means the creator can serve no
// more requests: it exited, broke the protocol, or the Client was closed.
var ErrClosed = errors.New("socket creator is gone")

// Name is the creator's executable name.
const Name = "porter-creator"

// Path finds the creator's executable: $PORTER_CREATOR if set, else
// porter-creator next to the running executable, else porter-creator in
// $PATH.
func Path() (string, error) {
	if p := os.Getenv("PORTER_CREATOR"); p != "" {
		return p, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), Name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath(Name)
	if err != nil {
		return "", fmt.Errorf("creator: %s not found next to this program nor in $PATH; set PORTER_CREATOR to its path", Name)
	}
	return p, nil
}

// DefaultTimeout bounds each Create unless SetTimeout says otherwise.
const DefaultTimeout = 10 * time.Second

// Client talks to one creator. Its methods are safe for concurrent use.
type Client struct {
	mu      sync.Mutex // one request in flight
	conn    *fdpass.Conn
	broken  error         // set once the creator can serve no more
	timeout time.Duration // bound on one Create; 0: DefaultTimeout

	cmd      *exec.Cmd // nil for NewClient
	done     chan struct{}
	doneOnce sync.Once
	exited   chan struct{} // closed when the process has exited; nil for NewClient
	waitErr  error         // the process's exit, valid after exited
}

// Start runs the creator at path with args, giving it one end of a fresh
// SOCK_STREAM socketpair as stdin and stdout and this process's stderr.
func Start(path string, args ...string) (*Client, error) {
	return StartCmd(exec.Command(path, args...))
}

// StartCmd is Start for a prepared command, for example one with
// SysProcAttr credentials. It sets cmd.Stdin and cmd.Stdout, and
// cmd.Stderr to os.Stderr when nil.
func StartCmd(cmd *exec.Cmd) (*Client, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("creator: socketpair: %w", err)
	}
	// Our end non-blocking, so that a Create waits in the netpoller, not in
	// a thread; the creator's end is a socket of its own and stays blocking.
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, fmt.Errorf("creator: socketpair: %w", err)
	}
	mine := os.NewFile(uintptr(fds[0]), "creator")
	theirs := os.NewFile(uintptr(fds[1]), "creator-stdio")
	defer theirs.Close()
	conn, err := fdpass.NewConn(mine) // closes mine when it fails
	if err != nil {
		return nil, err
	}
	cmd.Stdin, cmd.Stdout = theirs, theirs
	if cmd.Stderr == nil {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("creator: start: %w", err)
	}
	c := &Client{conn: conn, cmd: cmd, done: make(chan struct{}), exited: make(chan struct{})}
	go func() {
		c.waitErr = cmd.Wait()
		close(c.exited)
		// The creator is gone: let go of our end of its socketpair now,
		// not when someone next asks for a socket.
		c.mu.Lock()
		c.breakLocked(fmt.Errorf("the creator process exited (%v)", c.waitErr))
		c.mu.Unlock()
	}()
	return c, nil
}

// NewClient talks to a creator already running on the other end of conn,
// a SOCK_STREAM Unix socket; the Client owns conn. Done is closed when the
// Client fails or is closed. The timeout of Create needs a conn that
// supports deadlines (a *net.UnixConn, or an *os.File of a non-blocking
// socket); on one that does not, Create waits as long as the creator takes.
func NewClient(conn *fdpass.Conn) *Client {
	return &Client{conn: conn, done: make(chan struct{})}
}

// Pid returns the creator's process id, or 0 for NewClient.
func (c *Client) Pid() int {
	if c.cmd == nil || c.cmd.Process == nil {
		return 0
	}
	return c.cmd.Process.Pid
}

// Done is closed when the creator can serve no more: its process has
// exited, or the Client broke the link (a protocol error, a timeout, Close).
// By then the Client has closed its end of the link.
func (c *Client) Done() <-chan struct{} { return c.done }

// SetTimeout bounds each later Create to d (d <= 0: DefaultTimeout). A
// creator that has not answered in time, for example one stopped with
// SIGSTOP, makes Create fail with an error wrapping ErrClosed and
// os.ErrDeadlineExceeded: the answer may still come, so the stream is out
// of step and the Client breaks the link, and kills a creator it started.
func (c *Client) SetTimeout(d time.Duration) {
	c.mu.Lock()
	c.timeout = d
	c.mu.Unlock()
}

// Create asks for a socket of type p bound to addr. A refusal is an
// *Error; an error wrapping ErrClosed means the creator is gone (it
// exited, broke the protocol, or did not answer within the timeout, see
// SetTimeout).
//
// When this process has no fd free to receive the socket (EMFILE, ENFILE),
// the error wraps fdpass.ErrFDLimit and the errno: the creator made the
// socket and the kernel closed it, the link stays in step, and the next
// Create is served as usual.
func (c *Client) Create(p Proto, addr netip.AddrPort) (*os.File, error) {
	if p != UDP && p != TCP {
		return nil, fmt.Errorf("creator: unknown protocol %v", p)
	}
	a := addr.Addr().Unmap()
	if !a.IsValid() || a.Zone() != "" {
		return nil, fmt.Errorf("creator: %s: need an IPv4 or IPv6 address without zone", addr)
	}
	addr = netip.AddrPortFrom(a, addr.Port())
	req := make([]byte, 0, 21)
	req = append(req, 'S', byte(p), '4', byte(addr.Port()>>8), byte(addr.Port()))
	if a.Is6() {
		req[2] = '6'
		b := a.As16()
		req = append(req, b[:]...)
	} else {
		b := a.As4()
		req = append(req, b[:]...)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return nil, c.broken
	}
	timeout := c.timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	// A conn without deadlines (NewClient with one) just waits.
	c.conn.SetDeadline(time.Now().Add(timeout))
	f, keep, err := c.roundTrip(req, p, addr)
	if err == nil || keep {
		c.conn.SetDeadline(time.Time{})
		return f, err
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("the creator did not answer within %v (stopped or hung?); its answer could still come and put the link out of step, so the link is closed%s: %w",
			timeout, c.killNote(), err)
		c.breakLocked(err)
		if c.cmd != nil {
			c.cmd.Process.Kill()
		}
		return nil, c.broken
	}
	c.breakLocked(err)
	return nil, c.broken
}

func (c *Client) killNote() string {
	if c.cmd == nil {
		return ""
	}
	return fmt.Sprintf(" and the creator (pid %d) killed", c.Pid())
}

// roundTrip sends one request and reads its answer. keep says the link is
// still in step after err: a refusal, or no fd free for the socket.
func (c *Client) roundTrip(req []byte, p Proto, addr netip.AddrPort) (f *os.File, keep bool, err error) {
	if _, err := c.conn.Send(req); err != nil {
		return nil, false, fmt.Errorf("sending the request: %w", err)
	}
	var b [6]byte
	if err := c.read(b[:1]); err != nil {
		return nil, false, err
	}
	switch b[0] {
	case 'S':
		m, err := c.conn.Recv(b[:1], 1)
		if err == io.EOF {
			return nil, false, errEOF
		}
		if errors.Is(err, fdpass.ErrFDLimit) {
			// The byte the fd came with was read and the fd closed
			// (fdpass says so): the link is in step, one answer
			// consumed. The socket is lost, the creator is fine.
			return nil, true, fmt.Errorf("creator: %s %s: no fd free to receive the new socket, which was closed: %w", p, addr, err)
		}
		if err != nil {
			return nil, false, fmt.Errorf("receiving the socket: %w", err)
		}
		if m.N != 1 || b[0] != 0 || len(m.Files) != 1 {
			m.Close()
			return nil, false, fmt.Errorf("protocol error: after 'S' want byte 0x00 with one descriptor, got %d byte(s) %#x with %d", m.N, b[0], len(m.Files))
		}
		return m.Files[0], true, nil
	case 'E':
		if err := c.read(b[1:6]); err != nil {
			return nil, false, err
		}
		op := "bind"
		switch b[1] {
		case 'S':
			op = "socket"
		case 'B':
		default:
			return nil, false, fmt.Errorf("protocol error: unknown failure step %q", b[1])
		}
		var v int32
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&v)), 4), b[2:6])
		return nil, true, &Error{Op: op, Proto: p, Addr: addr, Errno: syscall.Errno(v)}
	case 'F':
		if err := c.read(b[1:2]); err != nil {
			return nil, false, err
		}
		return nil, false, fmt.Errorf("the creator reported a fatal error %q (%s)", b[1], fatalText(b[1]))
	default:
		return nil, false, fmt.Errorf("protocol error: unknown answer byte %#x", b[0])
	}
}

func fatalText(code byte) string {
	if code == 'I' {
		return "invalid input"
	}
	return "unknown condition"
}

var errEOF = errors.New("the creator closed the connection")

// read fills b from the creator; no descriptor may come with it.
func (c *Client) read(b []byte) error {
	_, err := c.conn.RecvFull(b, 0)
	if err != nil {
		if err == io.EOF {
			return errEOF
		}
		return fmt.Errorf("reading the answer: %w", err)
	}
	return nil
}

// breakLocked marks the client unusable after err, closes the
// connection, which makes a running creator exit, and closes Done.
func (c *Client) breakLocked(err error) {
	if c.broken == nil {
		c.broken = fmt.Errorf("%w: %w", ErrClosed, err)
		c.conn.Close()
	}
	c.doneOnce.Do(func() { close(c.done) })
}

// Close asks the creator to terminate ('T'), closes the connection and,
// for a started creator, waits up to five seconds for it to exit before
// killing it. It returns the process's exit error, if any.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.broken == nil {
		c.conn.SetDeadline(time.Now().Add(time.Second))
		c.conn.Send([]byte{'T'})
	}
	c.breakLocked(errors.New("client closed"))
	c.mu.Unlock()
	if c.cmd == nil {
		return nil
	}
	select {
	case <-c.exited:
	case <-time.After(5 * time.Second):
		c.cmd.Process.Kill()
		<-c.exited
	}
	if c.waitErr != nil {
		return fmt.Errorf("creator: %w", c.waitErr)
	}
	return nil
}
