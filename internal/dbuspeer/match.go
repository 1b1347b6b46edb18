package dbuspeer

import (
	"errors"
	"fmt"
	"time"

	"github.com/porter-ipc/porter/internal/dbuswire"
	"golang.org/x/sys/unix"
)

// Watching names, and reading the signals of many connections at once,
// for the scale benchmarks (issue 11): a thousand watchers read by one
// epoll loop, not by a thousand threads blocked in recvmsg.

// NameOwnerChangedRule is the match rule of a watcher of one name's
// owner: the bus's NameOwnerChanged signal with arg0 = name.
func NameOwnerChangedRule(name string) string {
	return "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus'," +
		"member='NameOwnerChanged',arg0='" + name + "'"
}

// NameOwnerChanged reads the body of org.freedesktop.DBus.NameOwnerChanged
// (signature "sss"): the name, its old owner and its new owner ("" for
// none).
func (m *Message) NameOwnerChanged() (name, old, new string, err error) {
	if m.Signature != "sss" {
		return "", "", "", fmt.Errorf("dbus: NameOwnerChanged with signature %q, want \"sss\"", m.Signature)
	}
	d := dbuswire.NewDecoder('l', m.Signature, m.Body)
	if name, err = d.String(); err == nil {
		if old, err = d.String(); err == nil {
			new, err = d.String()
		}
	}
	if err != nil {
		return "", "", "", fmt.Errorf("dbus: NameOwnerChanged: %w", err)
	}
	return name, old, new, nil
}

// whole reports whether a whole message is already read and waiting.
func (c *Conn) whole() bool {
	n, err := messageLen(c.in)
	return err != nil || (n > 0 && len(c.in) >= n) // Read reports the error
}

// ReadReady calls fn with every message that can be read without
// waiting, on a connection whose socket is non-blocking (Poller.AddConn).
// The messages' FDs are fn's. It returns io.EOF (wrapped) once the bus
// closed the connection.
func (c *Conn) ReadReady(fn func(*Message)) error {
	for {
		for c.whole() {
			m, err := c.Read()
			if err != nil {
				return err
			}
			fn(m)
		}
		if err := c.fill(); err != nil {
			if errors.Is(err, unix.EAGAIN) {
				return nil
			}
			return err
		}
	}
}

// Poller waits on many sockets with one epoll set and, when one can be
// read, calls the function it was added with. One goroutine uses a Poller.
type Poller struct {
	epfd   int
	ready  map[int32]func() error
	events []unix.EpollEvent
}

// NewPoller makes an empty Poller.
func NewPoller() (*Poller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("dbuspeer: epoll_create1: %w", err)
	}
	return &Poller{epfd: fd, ready: map[int32]func() error{}, events: make([]unix.EpollEvent, 256)}, nil
}

// Add makes fd non-blocking and has Wait call ready whenever it can be
// read (level-triggered: ready reads until the socket would block).
func (p *Poller) Add(fd int, ready func() error) error {
	if err := unix.SetNonblock(fd, true); err != nil {
		return fmt.Errorf("dbuspeer: poller: fd %d: %w", fd, err)
	}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
		return fmt.Errorf("dbuspeer: poller: epoll_ctl add %d: %w", fd, err)
	}
	p.ready[int32(fd)] = ready
	return nil
}

// AddConn has Wait read c and call fn with each of its messages. From
// then on c is read only through the Poller (its socket is non-blocking);
// it stays the caller's to close. Messages already read into c's buffer
// go to fn at once.
func (p *Poller) AddConn(c *Conn, fn func(*Message)) error {
	ready := func() error { return c.ReadReady(fn) }
	if err := p.Add(c.fd, ready); err != nil {
		return err
	}
	return ready()
}

// Wait waits up to timeout for sockets of the set to be readable and
// calls their ready functions; it returns how many were, 0 on timeout,
// and the first error a ready function returned.
func (p *Poller) Wait(timeout time.Duration) (int, error) {
	ms := int(timeout / time.Millisecond)
	for {
		n, err := unix.EpollWait(p.epfd, p.events, ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("dbuspeer: poller: epoll_wait: %w", err)
		}
		for _, ev := range p.events[:n] {
			if ready := p.ready[ev.Fd]; ready != nil {
				if err := ready(); err != nil {
					return n, fmt.Errorf("dbuspeer: poller: fd %d: %w", ev.Fd, err)
				}
			}
		}
		return n, nil
	}
}

// Close closes the epoll set (not the sockets in it).
func (p *Poller) Close() error {
	return unix.Close(p.epfd)
}
