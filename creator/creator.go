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

// Proto is the socket type byte of a request.
type Proto byte

// The socket types the creator makes.
const (
	UDP Proto = 'U' // SOCK_DGRAM
	TCP Proto = 'T' // SOCK_STREAM
)

// String returns "udp" or "tcp".
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

// Client talks to one creator. Its methods are safe for concurrent use.
type Client struct {
	mu     sync.Mutex // one request in flight
	conn   *fdpass.Conn
	broken error // set once the creator can serve no more

	cmd     *exec.Cmd // nil for NewClient
	done    chan struct{}
	waitErr error // the process's exit, valid after done
	closing sync.Once
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
	conn, err := fdpass.NewConn(mine)
	if err != nil {
		mine.Close()
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
	c := &Client{conn: conn, cmd: cmd, done: make(chan struct{})}
	go func() {
		c.waitErr = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// NewClient talks to a creator already running on the other end of conn,
// a SOCK_STREAM Unix socket; the Client owns conn. Done is closed when the
// Client fails or is closed.
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

// Done is closed when the creator process has exited (for NewClient: when
// the Client has failed or been closed).
func (c *Client) Done() <-chan struct{} { return c.done }

// Create asks for a socket of type p bound to addr. A refusal is an
// *Error; an error wrapping ErrClosed means the creator is gone.
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
	f, err := c.roundTrip(req, p, addr)
	var ce *Error
	if err != nil && !errors.As(err, &ce) {
		c.breakLocked(err)
		return nil, c.broken
	}
	return f, err
}

func (c *Client) roundTrip(req []byte, p Proto, addr netip.AddrPort) (*os.File, error) {
	if _, err := c.conn.Send(req); err != nil {
		return nil, fmt.Errorf("sending the request: %w", err)
	}
	var b [6]byte
	if err := c.read(b[:1]); err != nil {
		return nil, err
	}
	switch b[0] {
	case 'S':
		m, err := c.conn.Recv(b[:1], 1)
		if err == io.EOF {
			return nil, errEOF
		}
		if err != nil {
			return nil, fmt.Errorf("receiving the socket: %w", err)
		}
		if m.N != 1 || b[0] != 0 || len(m.Files) != 1 {
			m.Close()
			return nil, fmt.Errorf("protocol error: after 'S' want byte 0x00 with one descriptor, got %d byte(s) %#x with %d", m.N, b[0], len(m.Files))
		}
		return m.Files[0], nil
	case 'E':
		if err := c.read(b[1:6]); err != nil {
			return nil, err
		}
		op := "bind"
		switch b[1] {
		case 'S':
			op = "socket"
		case 'B':
		default:
			return nil, fmt.Errorf("protocol error: unknown failure step %q", b[1])
		}
		var v int32
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&v)), 4), b[2:6])
		return nil, &Error{Op: op, Proto: p, Addr: addr, Errno: syscall.Errno(v)}
	case 'F':
		if err := c.read(b[1:2]); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("the creator reported a fatal error %q (%s)", b[1], fatalText(b[1]))
	default:
		return nil, fmt.Errorf("protocol error: unknown answer byte %#x", b[0])
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

// breakLocked marks the client unusable after err and closes the
// connection, which makes a running creator exit.
func (c *Client) breakLocked(err error) {
	if c.broken == nil {
		c.broken = fmt.Errorf("%w: %w", ErrClosed, err)
		c.conn.Close()
		if c.cmd == nil {
			close(c.done)
		}
	}
}

// Close asks the creator to terminate ('T'), closes the connection and,
// for a started creator, waits up to five seconds for it to exit before
// killing it. It returns the process's exit error, if any.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.broken == nil {
		c.conn.Send([]byte{'T'})
	}
	c.breakLocked(errors.New("client closed"))
	c.mu.Unlock()
	if c.cmd == nil {
		return nil
	}
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
	if c.waitErr != nil {
		return fmt.Errorf("creator: %w", c.waitErr)
	}
	return nil
}
