package dbuspeer

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// FlagNoReplyExpected is the D-Bus header flag of calls that want no reply.
const FlagNoReplyExpected = 1

// maxFDs is how many fds one read takes in; D-Bus buses pass at most 16
// (dbus-daemon's default max_message_unix_fds) in one message.
const maxFDs = 64

// Conn is a lean D-Bus client connection on a blocking unix stream
// socket: EXTERNAL authentication, fd passing, and synchronous calls. One
// goroutine uses a Conn at a time, except Shutdown, which may be called
// from any goroutine to wake a blocked read.
type Conn struct {
	fd     int
	path   string
	serial uint32
	in     []byte // bytes read and not yet consumed
	fds    []int  // fds read and not yet claimed by a message
	oob    []byte
	out    []byte
	// Name is the unique name the bus gave in its reply to Hello.
	Name string
}

// Dial connects to the bus whose socket is at path, authenticates as the
// process's effective uid (AUTH EXTERNAL), agrees on fd passing and says
// Hello. The handshake is pipelined: one write, as sd-bus does it.
func Dial(path string) (*Conn, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dbus: dial %s: socket: %w", path, err)
	}
	c := &Conn{fd: fd, path: path, oob: make([]byte, unix.CmsgSpace(4*maxFDs)), in: make([]byte, 0, 64<<10)}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("dbus: dial %s: connect: %w", path, err)
	}
	if err := c.handshake(); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("dbus: dial %s: %w", path, err)
	}
	return c, nil
}

func (c *Conn) handshake() error {
	uid := hex.EncodeToString([]byte(strconv.Itoa(os.Geteuid())))
	c.out = append(c.out[:0], "\x00AUTH EXTERNAL "+uid+"\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n"...)
	c.serial++
	c.out = appendMessage(c.out, &Message{
		Type: TypeMethodCall, Path: "/org/freedesktop/DBus", Interface: "org.freedesktop.DBus",
		Member: "Hello", Destination: "org.freedesktop.DBus",
	}, c.serial)
	if err := c.write(c.out, nil); err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	for _, want := range []string{"OK ", "AGREE_UNIX_FD"} {
		line, err := c.line()
		if err != nil {
			return fmt.Errorf("auth: %w", err)
		}
		if len(line) < len(want) || line[:len(want)] != want {
			return fmt.Errorf("auth: bus answered %q, want %q", line, want)
		}
	}
	reply, err := c.reply(c.serial)
	if err != nil {
		return fmt.Errorf("Hello: %w", err)
	}
	c.Name, err = reply.BodyString()
	return err
}

// line reads one CRLF-terminated authentication line.
func (c *Conn) line() (string, error) {
	for {
		if i := bytes.Index(c.in, []byte("\r\n")); i >= 0 {
			s := string(c.in[:i])
			c.in = c.in[:copy(c.in, c.in[i+2:])]
			return s, nil
		}
		if len(c.in) > 4096 {
			return "", errors.New("authentication line too long")
		}
		if err := c.fill(); err != nil {
			return "", err
		}
	}
}

// fill reads more bytes (and fds) from the socket.
func (c *Conn) fill() error {
	if cap(c.in)-len(c.in) < 4096 {
		c.in = append(make([]byte, 0, 2*cap(c.in)+4096), c.in...)
	}
	for {
		n, oobn, _, _, err := unix.Recvmsg(c.fd, c.in[len(c.in):cap(c.in)], c.oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if oobn > 0 {
			msgs, err := unix.ParseSocketControlMessage(c.oob[:oobn])
			if err != nil {
				return fmt.Errorf("read: control message: %w", err)
			}
			for i := range msgs {
				fds, err := unix.ParseUnixRights(&msgs[i])
				if err == nil {
					c.fds = append(c.fds, fds...)
				}
			}
		}
		if n == 0 {
			return io.EOF
		}
		c.in = c.in[:len(c.in)+n]
		return nil
	}
}

// write sends b, with fds attached to its first byte.
func (c *Conn) write(b []byte, fds []int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	for len(b) > 0 {
		n, err := unix.SendmsgN(c.fd, b, oob, nil, unix.MSG_NOSIGNAL)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("write: %w", err)
		}
		b, oob = b[n:], nil
	}
	return nil
}

// Read returns the next message from the bus. Its FDs are the caller's.
func (c *Conn) Read() (*Message, error) {
	for {
		n, err := messageLen(c.in)
		if err != nil {
			return nil, err
		}
		if n > 0 && len(c.in) >= n {
			m, nfds, err := parseMessage(c.in[:n])
			if err != nil {
				return nil, err
			}
			if nfds > len(c.fds) {
				return nil, fmt.Errorf("dbus: message announces %d fds, %d arrived", nfds, len(c.fds))
			}
			m.Body = append([]byte(nil), m.Body...)
			if nfds > 0 {
				m.FDs = append([]int(nil), c.fds[:nfds]...)
				c.fds = c.fds[:copy(c.fds, c.fds[nfds:])]
			}
			c.in = c.in[:copy(c.in, c.in[n:])]
			return m, nil
		}
		if n > cap(c.in) {
			c.in = append(make([]byte, 0, n+4096), c.in...)
		}
		if err := c.fill(); err != nil {
			return nil, err
		}
	}
}

// Send writes m with the next serial, which it returns. m is not changed;
// its FDs stay the caller's.
func (c *Conn) Send(m *Message) (uint32, error) {
	c.serial++
	c.out = appendMessage(c.out[:0], m, c.serial)
	return c.serial, c.write(c.out, m.FDs)
}

// reply reads until the reply to serial, dropping (and closing the fds
// of) whatever else arrives: the bus's signals such as NameAcquired. An
// ERROR reply is returned as an error.
func (c *Conn) reply(serial uint32) (*Message, error) {
	for {
		m, err := c.Read()
		if err != nil {
			return nil, err
		}
		if (m.Type == TypeMethodReturn || m.Type == TypeError) && m.ReplySerial == serial {
			if m.Type == TypeError {
				m.Close()
				text, _ := m.BodyString()
				return nil, fmt.Errorf("dbus: %s: %s", m.ErrorName, text)
			}
			return m, nil
		}
		m.Close()
	}
}

// Call sends the method call m and waits for its reply, whose FDs the
// caller closes.
func (c *Conn) Call(m *Message) (*Message, error) {
	serial, err := c.Send(m)
	if err != nil {
		return nil, err
	}
	return c.reply(serial)
}

// RequestName asks the bus for name, without queueing, and fails unless
// this connection became its primary owner.
func (c *Conn) RequestName(name string) error {
	body := StringBody(name)
	for len(body)%4 != 0 {
		body = append(body, 0)
	}
	body = binary.LittleEndian.AppendUint32(body, 4) // DBUS_NAME_FLAG_DO_NOT_QUEUE
	r, err := c.Call(&Message{
		Type: TypeMethodCall, Path: "/org/freedesktop/DBus", Interface: "org.freedesktop.DBus",
		Member: "RequestName", Destination: "org.freedesktop.DBus", Signature: "su", Body: body,
	})
	if err != nil {
		return fmt.Errorf("dbus: RequestName %s: %w", name, err)
	}
	v, err := r.BodyUint32()
	if err != nil {
		return fmt.Errorf("dbus: RequestName %s: %w", name, err)
	}
	if v != 1 {
		return fmt.Errorf("dbus: RequestName %s: answer %d, not primary owner", name, v)
	}
	return nil
}

// AddMatch adds a match rule (org.freedesktop.DBus.AddMatch), such as
// "type='signal',interface='org.porter.Bench'".
func (c *Conn) AddMatch(rule string) error {
	r, err := c.Call(&Message{
		Type: TypeMethodCall, Path: "/org/freedesktop/DBus", Interface: "org.freedesktop.DBus",
		Member: "AddMatch", Destination: "org.freedesktop.DBus", Signature: "s", Body: StringBody(rule),
	})
	if err != nil {
		return fmt.Errorf("dbus: AddMatch %s: %w", rule, err)
	}
	r.Close()
	return nil
}

// Shutdown wakes a read blocked on c (it then fails with io.EOF) and
// stops further writes; Close must still follow.
func (c *Conn) Shutdown() error {
	return unix.Shutdown(c.fd, unix.SHUT_RDWR)
}

// Close closes the connection and any fds read but not claimed.
func (c *Conn) Close() error {
	for _, fd := range c.fds {
		unix.Close(fd)
	}
	c.fds = nil
	return unix.Close(c.fd)
}

// Close closes the message's fds.
func (m *Message) Close() {
	for _, fd := range m.FDs {
		unix.Close(fd)
	}
	m.FDs = nil
}

// Echo is a service on a bus that answers every method call with a
// return carrying the call's own signature, body and fds.
type Echo struct {
	c    *Conn
	done chan error
}

// StartEcho connects to the bus at path, takes name (unless "") and
// answers calls until Close.
func StartEcho(path, name string) (*Echo, error) { return startService(path, name, echo) }

// startService connects to the bus at path, takes name (unless "") and
// runs serve on the connection until Close.
func startService(path, name string, serve func(*Conn) error) (*Echo, error) {
	c, err := Dial(path)
	if err != nil {
		return nil, err
	}
	if name != "" {
		if err := c.RequestName(name); err != nil {
			c.Close()
			return nil, err
		}
	}
	e := &Echo{c: c, done: make(chan error, 1)}
	go func() { e.done <- serve(c) }()
	return e, nil
}

// Name is the echo service's unique name.
func (e *Echo) Name() string { return e.c.Name }

func echo(c *Conn) error {
	for {
		m, err := c.Read()
		if err != nil {
			return err
		}
		if m.Type == TypeMethodCall && m.Flags&FlagNoReplyExpected == 0 {
			_, err = c.Send(&Message{
				Type: TypeMethodReturn, ReplySerial: m.Serial, Destination: m.Sender,
				Signature: m.Signature, Body: m.Body, FDs: m.FDs,
			})
		}
		m.Close()
		if err != nil {
			return err
		}
	}
}

// Close stops the service and closes its connection. It reports why the
// service stopped if that was not the Close itself.
func (e *Echo) Close() error {
	e.c.Shutdown()
	err := <-e.done
	e.c.Close()
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return nil
	}
	return fmt.Errorf("dbus: service on %s: %w", e.c.path, err)
}
