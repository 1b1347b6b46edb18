package bus

import (
	"crypto/rand"
	"errors"
	"log"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/porter-ipc/porter/internal/sockpath"
)

// DefaultPath is where the tools look for the bus and where `porter bus
// up` creates it: $PORTER_BUS, else $XDG_RUNTIME_DIR/porter/bus for a
// normal user, /run/porter/bus for root (and for a user without
// XDG_RUNTIME_DIR).
func DefaultPath() string {
	if p := os.Getenv("PORTER_BUS"); p != "" {
		return p
	}
	if os.Geteuid() != 0 {
		if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
			return filepath.Join(d, "porter", "bus")
		}
	}
	return "/run/porter/bus"
}

// Master is the bus master: it authenticates endpoints, assigns their
// addresses, keeps the name registry, judges by its Policy, introduces
// endpoints on direct channels, routes what cannot go direct and reports
// deaths (docs/protocol-bus.md). It serves every connection from one
// epoll loop on non-blocking sockets, so an idle endpoint costs a small
// struct and no goroutine, and no endpoint can block it.
type Master struct {
	// ErrorLog receives the master's log lines (refused joins, forged
	// sources, internal failures); nil means the log package's standard
	// logger.
	ErrorLog *log.Logger

	// StallTimeout, when positive, expels an endpoint whose queue at the
	// master stayed full that long (FAIL EXPELLED, then EndpointGone
	// reason EXPELLED). Zero, the default, never expels for slowness:
	// senders get QUEUE_FULL and multicast copies are counted as Lost.
	// Set it before Serve.
	StallTimeout time.Duration

	path   string
	ln     *net.UnixListener
	lfd    int
	fileID sockpath.FileID
	policy Policy

	// The D-Bus front door (ListenDBus), when there is one.
	dpath   string
	dln     *net.UnixListener
	dlfd    int
	dfileID sockpath.FileID

	epfd   int        // eps's fd
	eps    *epollSet  // the loop waits on it
	fdmu   sync.Mutex // guards wakefd against Close
	wakefd int

	closing    atomic.Bool
	revalidate atomic.Bool
	serving    atomic.Bool
	closeOnce  sync.Once
	done       chan struct{}
	closeErr   error

	// The rest belongs to the loop goroutine alone.
	st masterState
}

// Listen creates a bus at path ("" = DefaultPath()) and returns its
// master, which serves once Serve is called. The socket is SOCK_SEQPACKET,
// mode 0666 (the policy decides who joins, not the file mode); a stale
// socket at path is replaced, a live one is EADDRINUSE, anything else is
// refused (internal/sockpath). A nil policy is DefaultPolicy with the
// process's effective uid.
func Listen(path string, policy Policy) (*Master, error) {
	if path == "" {
		path = DefaultPath()
	}
	if policy == nil {
		policy = DefaultPolicy(os.Geteuid())
	}
	ln, id, err := sockpath.ListenWith("unixpacket", path, sockpath.Options{Perm: 0o666})
	if err != nil {
		return nil, err
	}
	m := &Master{path: path, ln: ln, fileID: id, policy: policy, epfd: -1, wakefd: -1, dlfd: -1, done: make(chan struct{})}
	fail := func(op string, err error) (*Master, error) {
		m.closeFDs()
		return nil, &net.OpError{Op: op, Net: "unixpacket", Addr: &net.UnixAddr{Name: path, Net: "unixpacket"}, Err: os.NewSyscallError(op, err)}
	}
	rc, err := ln.SyscallConn()
	if err != nil {
		return fail("listen", err)
	}
	if err := rc.Control(func(fd uintptr) { m.lfd = int(fd) }); err != nil {
		return fail("listen", err)
	}
	// Every accepted connection inherits SO_PASSCRED, which HELLO's
	// credentials need: one setsockopt here instead of one per join.
	if err := unix.SetsockoptInt(m.lfd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		return fail("setsockopt", err)
	}
	if m.eps, err = newEpollSet(); err != nil {
		return fail("epoll_create1", err)
	}
	m.epfd = m.eps.fd
	if m.wakefd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return fail("eventfd", err)
	}
	if err := m.epollAdd(m.wakefd, unix.EPOLLIN); err != nil {
		return fail("epoll_ctl", err)
	}
	if err := m.epollAdd(m.lfd, unix.EPOLLIN); err != nil {
		return fail("epoll_ctl", err)
	}
	m.st.init(m)
	return m, nil
}

// Addr is the path of the bus socket.
func (m *Master) Addr() string { return m.path }

// Serve runs the master's loop until Close; it returns nil after Close,
// or the error that stopped the loop. It may be called once.
func (m *Master) Serve() error {
	if !m.serving.CompareAndSwap(false, true) {
		return errors.New("bus: Serve called twice")
	}
	defer close(m.done)
	err := m.st.loop()
	m.st.shutdown()
	m.closeFDs()
	return err
}

// Close stops the master: every connection gets FAIL SHUTTING_DOWN and is
// closed, and the socket file is removed (if it is still the one Listen
// created). It waits for Serve to return.
func (m *Master) Close() error {
	m.closeOnce.Do(func() {
		m.closing.Store(true)
		if m.serving.Load() {
			m.wake()
			<-m.done
		} else if m.serving.CompareAndSwap(false, true) {
			// Never served: nobody was accepted, nothing to tell.
			m.st.shutdown()
			m.closeFDs()
			close(m.done)
		} else {
			<-m.done
		}
		if m.fileID.Is(m.path) {
			if err := os.Remove(m.path); err != nil && !errors.Is(err, os.ErrNotExist) {
				m.closeErr = err
			}
		}
		if m.dln != nil && m.dfileID.Is(m.dpath) {
			if err := os.Remove(m.dpath); err != nil && !errors.Is(err, os.ErrNotExist) && m.closeErr == nil {
				m.closeErr = err
			}
		}
	})
	return m.closeErr
}

// Revalidate asks the master to judge every introduced channel again with
// the policy (an embedder whose policy changed calls it): channels the
// policy no longer allows are revoked (REVOKE POLICY to both sides), and
// cached OpTalk decisions are forgotten.
func (m *Master) Revalidate() {
	m.revalidate.Store(true)
	m.wake()
}

func (m *Master) wake() {
	m.fdmu.Lock()
	defer m.fdmu.Unlock()
	if m.wakefd >= 0 {
		one := [8]byte{1}
		unix.Write(m.wakefd, one[:])
	}
}

func (m *Master) closeFDs() {
	if m.ln != nil {
		m.ln.Close()
	}
	if m.dln != nil {
		m.dln.Close()
	}
	if m.eps != nil {
		m.eps.close()
		m.eps, m.epfd = nil, -1
	}
	m.fdmu.Lock()
	if m.wakefd >= 0 {
		unix.Close(m.wakefd)
		m.wakefd = -1
	}
	m.fdmu.Unlock()
}

func (m *Master) epollAdd(fd int, events uint32) error {
	return unix.EpollCtl(m.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: events, Fd: int32(fd)})
}

func (m *Master) epollMod(fd int, events uint32) error {
	return unix.EpollCtl(m.epfd, unix.EPOLL_CTL_MOD, fd, &unix.EpollEvent{Events: events, Fd: int32(fd)})
}

func (m *Master) logf(format string, args ...any) {
	if m.ErrorLog != nil {
		m.ErrorLog.Printf(format, args...)
		return
	}
	log.Printf(format, args...)
}

// loop is the master's one goroutine: it waits for events and handles
// them, one connection after another, never blocking on any.
func (s *masterState) loop() error {
	m := s.m
	events := make([]unix.EpollEvent, 128)
	for {
		if m.closing.Load() {
			return nil
		}
		if m.revalidate.Swap(false) {
			s.revalidateAll()
		}
		timeout := -1
		if s.acceptPaused {
			timeout = 50
		}
		if m.StallTimeout > 0 && len(s.stalled) > 0 {
			ms := int(m.StallTimeout/(4*time.Millisecond)) + 1
			if timeout < 0 || ms < timeout {
				timeout = ms
			}
			s.expelStalled(time.Now())
		}
		if len(s.mon.waiting) > 0 {
			if next := s.drained(time.Now()); next >= 0 {
				ms := int(next/time.Millisecond) + 1
				if timeout < 0 || ms < timeout {
					timeout = ms
				}
			}
		}
		n, err := m.eps.wait(events, timeout)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return &net.OpError{Op: "epoll_wait", Net: "unixpacket", Addr: &net.UnixAddr{Name: m.path, Net: "unixpacket"}, Err: os.NewSyscallError("epoll_wait", err)}
		}
		if s.acceptPaused && time.Since(s.acceptPausedAt) >= 50*time.Millisecond {
			s.acceptPaused = false
			m.epollMod(m.lfd, unix.EPOLLIN)
			if m.dlfd >= 0 {
				m.epollMod(m.dlfd, unix.EPOLLIN)
			}
		}
		for i := 0; i < n; i++ {
			ev := events[i]
			fd := int(ev.Fd)
			switch fd {
			case m.wakefd:
				var b [8]byte
				unix.Read(m.wakefd, b[:])
			case m.lfd:
				s.accept(m.lfd, false)
			case m.dlfd:
				s.accept(m.dlfd, true)
			default:
				c := s.conns[int32(fd)]
				if c == nil {
					continue
				}
				if ev.Events&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) != 0 && len(c.out) > 0 {
					s.flush(c)
				}
				if !c.dead && (ev.Events&(unix.EPOLLIN|unix.EPOLLERR|unix.EPOLLHUP) != 0) {
					if c.d != nil {
						s.readDBus(c, ev.Events&(unix.EPOLLERR|unix.EPOLLHUP) != 0)
					} else {
						s.readFrom(c, ev.Events&(unix.EPOLLERR|unix.EPOLLHUP) != 0)
					}
				}
			}
		}
	}
}

// newBusID is WELCOME's bus id: 128 random bits for the bus's life.
func newBusID() (id [16]byte) {
	rand.Read(id[:])
	return id
}

// rawSock lets fdpass drive a non-blocking socket that the master's epoll
// loop, not Go's netpoller, waits on: each Read or Write calls f once, and
// "would block" comes back as fdpass.ErrWouldBlock.
type rawSock int

var errNotPolled = errors.New("bus: socket is waited on by the master's epoll loop")

func (r rawSock) SyscallConn() (syscall.RawConn, error) { return r, nil }
func (r rawSock) Close() error                          { return unix.Close(int(r)) }
func (r rawSock) Control(f func(fd uintptr)) error      { f(uintptr(r)); return nil }
func (r rawSock) Read(f func(fd uintptr) bool) error {
	if !f(uintptr(r)) {
		return errNotPolled
	}
	return nil
}
func (r rawSock) Write(f func(fd uintptr) bool) error {
	if !f(uintptr(r)) {
		return errNotPolled
	}
	return nil
}
