package broker

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/porter-ipc/porter/fdpass"
	"github.com/porter-ipc/porter/internal/fdutil"
	"golang.org/x/sys/unix"
)

// SocketEnv names the environment variable that tells clients where the
// broker's control socket is.
const SocketEnv = "PORTER_SOCKET"

// SocketName is the control socket's file name inside the broker's directory.
const SocketName = "porter.sock"

// SystemDir is the broker's directory when it runs as root.
const SystemDir = "/run/porter"

// DefaultDir is where porter up puts its control socket: SystemDir as
// root, else $XDG_RUNTIME_DIR/porter (SystemDir when that is unset).
func DefaultDir() string {
	if os.Geteuid() != 0 {
		if x := os.Getenv("XDG_RUNTIME_DIR"); x != "" {
			return filepath.Join(x, "porter")
		}
	}
	return SystemDir
}

// DefaultSocket is where clients look for the broker: $PORTER_SOCKET; else
// the socket in DefaultDir if it exists; else the system broker's.
func DefaultSocket() string {
	if p := os.Getenv(SocketEnv); p != "" {
		return p
	}
	p := filepath.Join(DefaultDir(), SocketName)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return filepath.Join(SystemDir, SocketName)
}

// Grant is a socket (or a deferred token for one) from the broker. Its
// File keeps the Client that obtained it reachable (see Client), so the
// reference is not released behind the program's back while the program
// can still use the socket.
type Grant struct {
	Token Token
	Proto Proto
	Addr  netip.AddrPort // the address the socket is really bound to
	File  *os.File       // the socket, owned by the caller; nil for a deferred grant
}

// Client is a connection to the broker. Every reference it obtains is
// held by this connection: closing it (or the process exiting) releases
// them all. Its methods are safe for concurrent use; requests are answered
// one at a time, in order.
//
// A Client the program no longer refers to is closed by the garbage
// collector, but not while the File of a Grant it returned is reachable:
// each granted *os.File keeps its Client alive. Only that *os.File does:
// a copy of the socket (net.FileListener, a dup, a child after exec)
// does not, so a program that keeps a copy and drops the File must keep
// the Client too. Dropping both lets the collector release the
// references; Close releases them at once.
type Client struct {
	mu   sync.Mutex
	conn *fdpass.Conn // the SOCK_SEQPACKET connection to the broker
	path string
	buf  []byte
	dead error // set after a fatal error: the broker closed the connection
}

// Dial connects to the broker's control socket at path ("" for
// DefaultSocket()).
func Dial(path string) (*Client, error) {
	if path == "" {
		path = DefaultSocket()
	}
	uc, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("porter broker: dial %s: %w (is porter up running? set %s to its socket)", path, err, SocketEnv)
	}
	conn, err := fdpass.NewConn(uc) // closes uc on error
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, path: path, buf: make([]byte, MaxMessage)}, nil
}

// NewClient wraps an already connected SOCK_SEQPACKET socket to the broker,
// such as one inherited across exec. It takes ownership of f: f is closed
// when the Client is, and also when NewClient fails.
func NewClient(f *os.File) (*Client, error) {
	conn, err := fdpass.NewConn(f) // closes f on error
	if err != nil {
		return nil, err
	}
	if conn.Type() != unix.SOCK_SEQPACKET {
		conn.Close()
		return nil, fmt.Errorf("porter broker: %s is not a SOCK_SEQPACKET socket", f.Name())
	}
	return &Client{conn: conn, path: f.Name(), buf: make([]byte, MaxMessage)}, nil
}

// Close closes the connection; the broker releases everything it held.
func (c *Client) Close() error { return c.conn.Close() }

// File returns a duplicate of the connection's fd, close-on-exec, owned by
// the caller: porter run clears close-on-exec on it so that the program it
// execs keeps holding the references.
func (c *Client) File() (*os.File, error) {
	nfd, err := fdutil.DupCloexec(c.conn.Socket())
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(nfd), c.path), nil
}

// roundTrip sends b (with file, if any) and reads one reply, which may
// carry one fd. The caller holds c.mu.
func (c *Client) roundTrip(op string, b []byte, file *os.File) (*message, *os.File, error) {
	if c.dead != nil {
		return nil, nil, c.dead
	}
	var err error
	if file != nil {
		_, err = c.conn.Send(b, file)
	} else {
		_, err = c.conn.Send(b)
	}
	if errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNRESET) {
		// The broker has closed the connection; the reason it gave
		// may be waiting to be read.
		var e *Error
		_, f, rerr := c.recv(op)
		if f != nil {
			f.Close() // not an answer to what we failed to send
		}
		if errors.As(rerr, &e) {
			c.dead = e
			return nil, nil, e
		}
	}
	if err != nil {
		c.dead = fmt.Errorf("porter broker: %s: %w", op, err)
		return nil, nil, c.dead
	}
	return c.recv(op)
}

func (c *Client) recv(op string) (*message, *os.File, error) {
	m, err := c.conn.Recv(c.buf, 1)
	if errors.Is(err, unix.ECONNRESET) {
		// The broker closed the connection while a message of ours was
		// unread; the reason it sent before closing is still queued
		// behind the reset, which reading has now cleared.
		if m2, err2 := c.conn.Recv(c.buf, 1); err2 == nil {
			m, err = m2, nil
		}
	}
	if err != nil {
		if errors.Is(err, fdpass.ErrFDLimit) {
			// This process had no fd free for the answer's socket: the
			// packet is consumed and the connection still in step, and
			// it keeps every other reference. (The broker counts the
			// lost one as held until the connection closes.)
			return nil, nil, fmt.Errorf("porter broker: %s: %w", op, err)
		}
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("the broker closed the connection: %w", io.ErrUnexpectedEOF)
		}
		c.dead = fmt.Errorf("porter broker: %s: %w", op, err)
		return nil, nil, c.dead
	}
	msg, perr := decode(c.buf[:m.N])
	if perr != nil {
		m.Close()
		c.dead = fmt.Errorf("porter broker: %s: bad reply: %w", op, perr)
		return nil, nil, c.dead
	}
	var f *os.File
	if len(m.Files) > 0 {
		if msg.Type != msgGrant {
			m.Close()
			c.dead = fmt.Errorf("porter broker: %s: %q reply carries an fd", op, msg.Type)
			return nil, nil, c.dead
		}
		f = m.Files[0]
	}
	if msg.Type == msgError {
		e := msg.Err
		e.Op = op
		if e.Code.Fatal() {
			c.dead = &e
		}
		return nil, nil, &e
	}
	return msg, f, nil
}

func (c *Client) unexpected(op string, m *message, f *os.File) error {
	if f != nil {
		f.Close()
	}
	c.dead = fmt.Errorf("porter broker: %s: unexpected %q reply", op, m.Type)
	return c.dead
}

// Request asks for a socket. Unless r.Defer is set the Grant carries the
// socket, held by this connection; with r.Defer it carries only a token,
// which any process may pick up once with Pickup before it expires.
func (c *Client) Request(r Request) (*Grant, error) {
	b, err := encodeRequest(&r)
	if err != nil {
		pe := err.(*protoError)
		return nil, &Error{Op: "request", Addr: r.Addr, Proto: r.Proto, Code: pe.code, Errno: defaultErrno(pe.code), Text: pe.text}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	m, f, err := c.roundTrip("request", b, nil)
	if err != nil {
		var e *Error
		if errors.As(err, &e) && !e.Addr.IsValid() {
			e.Addr, e.Proto = r.Addr, r.Proto
		}
		return nil, err
	}
	if m.Type != msgGrant || (f == nil) != r.Defer {
		return nil, c.unexpected("request", m, f)
	}
	return c.grant(m, f), nil
}

// grant is the Grant of m, whose File f (nil for a deferred grant) keeps
// c reachable: the collector must not close the connection that holds
// the reference while the program can still use the socket.
func (c *Client) grant(m *message, f *os.File) *Grant {
	if f != nil {
		runtime.AddCleanup(f, func(*Client) {}, c)
	}
	return &Grant{Token: m.Grant.Token, Proto: m.Grant.Proto, Addr: m.Grant.Addr, File: f}
}

// Pickup claims a deferred token: the socket, now held by this connection.
func (c *Client) Pickup(t Token) (*Grant, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, f, err := c.roundTrip("pickup", encodeToken(msgPickup, t), nil)
	if err != nil {
		return nil, err
	}
	if m.Type != msgGrant || f == nil {
		return nil, c.unexpected("pickup", m, f)
	}
	return c.grant(m, f), nil
}

// Release gives back the reference t names. The broker closes its copy of
// the socket when no reference is left (after its linger time). It does
// not close any copy of the socket the caller has.
func (c *Client) Release(t Token) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, f, err := c.roundTrip("release", encodeToken(msgRelease, t), nil)
	if err != nil {
		return err
	}
	if m.Type != msgDone || m.Token != t {
		return c.unexpected("release", m, f)
	}
	return nil
}

// ReleaseFile gives back one reference this connection holds to the
// socket f is a copy of, and returns its token. It borrows f.
func (c *Client) ReleaseFile(f *os.File) (Token, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, rf, err := c.roundTrip("release", header(msgReleaseFD), f)
	if err != nil {
		return Token{}, err
	}
	if m.Type != msgDone {
		return Token{}, c.unexpected("release", m, rf)
	}
	return m.Token, nil
}

// List returns the broker's cache: every socket with its holders.
func (c *Client) List() (*Listing, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, f, err := c.roundTrip("list", header(msgList), nil)
	l := &Listing{}
	for err == nil {
		switch m.Type {
		case msgSocket:
			si := m.Socket
			for i := 0; i < m.NHolder; i++ {
				hm, hf, err := c.recv("list")
				if err != nil {
					return nil, err
				}
				if hm.Type != msgHolder {
					return nil, c.unexpected("list", hm, hf)
				}
				si.Holders = append(si.Holders, hm.Holder)
			}
			l.Sockets = append(l.Sockets, si)
		case msgEnd:
			if m.End.Sockets != len(l.Sockets) {
				c.dead = fmt.Errorf("porter broker: list: END says %d sockets, %d came", m.End.Sockets, len(l.Sockets))
				return nil, c.dead
			}
			l.CreatorGone = m.End.CreatorGone
			return l, nil
		default:
			return nil, c.unexpected("list", m, f)
		}
		m, f, err = c.recv("list")
	}
	return nil, err
}
