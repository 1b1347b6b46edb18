// Package broker is porter's socket broker: an unprivileged daemon that
// asks the creator for bound sockets, caches and shares them under share
// modes and rules, hands them to applications over a SOCK_SEQPACKET Unix
// socket with 128-bit tokens, and takes references back when holders
// release them or their connection closes (exit, crash, kill -9).
//
// It follows the Boss side of BIND10's socket-creator API. Server is the
// daemon as a library (porter up is a thin wrapper); Client speaks the
// protocol (docs/protocol-broker.md) from the application side.
//
// Ownership: the Server owns one copy of every cached socket and closes it
// when the last reference goes (after Config.Linger). A Grant's File
// belongs to the caller. The broker never changes a socket's file status
// flags: all holders share one open file description, and it stays in the
// blocking mode the creator made it in.
package broker

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/porter-ipc/porter/fdpass"
	"github.com/porter-ipc/porter/internal/sockpath"
	"golang.org/x/sys/unix"
)

// Creator makes bound sockets on the broker's behalf. The file it returns
// belongs to the broker. An error that wraps ErrCreatorGone tells the
// broker that the creator has exited and no new socket can be made.
type Creator interface {
	Create(p Proto, addr netip.AddrPort) (*os.File, error)
}

// CreatorFunc adapts a function to Creator.
type CreatorFunc func(p Proto, addr netip.AddrPort) (*os.File, error)

// Create calls f.
func (f CreatorFunc) Create(p Proto, addr netip.AddrPort) (*os.File, error) { return f(p, addr) }

// Defaults for the zero values of Config.
const (
	DefaultBacklog          = 4096
	DefaultTokenTTL         = 30 * time.Second
	DefaultMaxSocketsPerUID = 1024
	DefaultMaxTokensPerUID  = 64
	DefaultMaxConnsPerUID   = 256
)

// Config configures a Server. The zero value of each field selects its
// default; a negative quota means unlimited.
type Config struct {
	Creator     Creator         // required
	CreatorDone <-chan struct{} // closed when the creator has exited; optional
	Rules       *Rules          // nil: the default policy (ports ≥ 1024 for all)
	Linger      time.Duration   // keep a socket this long after its last reference goes
	Backlog     int             // listen(2) backlog for TCP sockets
	TokenTTL    time.Duration   // how long a deferred token waits for pickup

	MaxSocketsPerUID int // references (held and pending) per uid
	MaxTokensPerUID  int // pending deferred tokens per uid
	MaxConnsPerUID   int // open connections per uid

	// Logger gets the broker's log; nil: slog.Default(). Repeated
	// warnings of one kind (a connection closed for a malformed message,
	// an fd shortage, ...) are logged at most 10 times in 10 s; then one
	// line says how many were left out, and how many there were in all.
	Logger *slog.Logger
}

// Server is the broker. Create it with New, give it listeners with Serve
// or connections with ServeConn, and stop it with Close.
type Server struct {
	cfg Config
	log *slog.Logger

	createMu sync.Mutex // serialises cache misses, so a socket is created once

	mu          sync.Mutex
	cache       map[key]*entry
	tokens      map[Token]*ref
	usage       map[int]*usage
	conns       map[*conn]struct{}
	listeners   map[net.Listener]struct{}
	closed      bool
	creatorGone bool
	stop        chan struct{} // closed when Close begins
	stopping    atomic.Bool   // set when Close begins; read without mu

	warns *warnLimiter // repeated warnings, rate-limited per kind

	wg sync.WaitGroup
}

type key struct {
	proto Proto
	addr  netip.AddrPort
}

// entry is one cached socket.
type entry struct {
	key      key
	file     *os.File
	dev, ino uint64
	refs     map[*ref]struct{}
	modes    map[mode]int // how many refs have each share mode and app: the compatibility check is O(modes), not O(refs)
	linger   *time.Timer
	until    time.Time // when lingering ends
	closed   bool
}

// ref is one reference to an entry: held by a connection, or pending
// (a deferred token nobody has picked up yet).
type ref struct {
	tok           Token
	e             *entry
	share         Share
	app           string
	pid, uid, gid int
	c             *conn // nil while pending
	expires       time.Time
	timer         *time.Timer
}

// mode is a reference's share mode and application name.
type mode struct {
	share Share
	app   string
}

type usage struct{ refs, pending, conns int }

type conn struct {
	fc   *fdpass.Conn
	cred fdpass.Cred
	refs map[*ref]struct{}

	// mu orders the answer to a request and the SHUTTING_DOWN that Close
	// sends, so that each request gets exactly one answer.
	mu   sync.Mutex
	busy bool // a request is being answered
	bye  bool // SHUTTING_DOWN was sent: the connection is over
}

// New returns a Server with cfg, not yet serving.
func New(cfg Config) (*Server, error) {
	if cfg.Creator == nil {
		return nil, errors.New("broker: Config.Creator is nil")
	}
	if cfg.Backlog <= 0 {
		cfg.Backlog = DefaultBacklog
	}
	if cfg.TokenTTL <= 0 {
		cfg.TokenTTL = DefaultTokenTTL
	}
	if cfg.Linger < 0 {
		cfg.Linger = 0
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&cfg.MaxSocketsPerUID, DefaultMaxSocketsPerUID)
	def(&cfg.MaxTokensPerUID, DefaultMaxTokensPerUID)
	def(&cfg.MaxConnsPerUID, DefaultMaxConnsPerUID)
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		cache:     map[key]*entry{},
		tokens:    map[Token]*ref{},
		usage:     map[int]*usage{},
		conns:     map[*conn]struct{}{},
		listeners: map[net.Listener]struct{}{},
		stop:      make(chan struct{}),
		warns:     newWarnLimiter(warnBurst, warnEvery, time.Now),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if cfg.CreatorDone != nil {
		s.wg.Add(1)
		go s.watchCreator(cfg.CreatorDone)
	}
	return s, nil
}

// Listen creates the broker's control socket: a SOCK_SEQPACKET Unix socket
// at path with the given permissions (set before it listens). A stale
// socket file that nobody listens on is replaced; a live one is
// EADDRINUSE (another broker runs), and a file that is not a socket is
// refused and left alone (internal/sockpath). Closing the listener
// removes the socket file.
func Listen(path string, perm os.FileMode) (*net.UnixListener, error) {
	l, err := sockpath.Listen("unixpacket", path, perm)
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(true)
	return l, nil
}

// Serve accepts connections on l until l is closed or the Server is. It
// takes ownership of l. l must yield Unix connections.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return net.ErrClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || fdpass.Retryable(err) || errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
				s.warn(s.log, "accept failed", "accept failed; retrying", "err", err)
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return err
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			c.Close()
			return fmt.Errorf("broker: listener yields %T, not *net.UnixConn", c)
		}
		fc, err := fdpass.NewConn(uc)
		if err != nil {
			uc.Close()
			s.warn(s.log, "connection refused", "connection refused", "err", err)
			continue
		}
		s.ServeConn(fc)
	}
}

// ServeConn serves one client connection in a new goroutine and takes
// ownership of fc. The peer's credentials are its SO_PEERCRED.
func (s *Server) ServeConn(fc *fdpass.Conn) {
	cred, err := fc.PeerCred()
	if err != nil {
		s.warn(s.log, "connection refused: no peer credentials", "connection refused: no peer credentials", "err", err)
		fc.Close()
		return
	}
	c := &conn{fc: fc, cred: cred, refs: map[*ref]struct{}{}}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		fc.Send(encodeError(CodeShuttingDown, defaultErrno(CodeShuttingDown), "the broker is stopping"))
		fc.Close()
		return
	}
	u := s.use(cred.UID)
	if n := u.conns; s.cfg.MaxConnsPerUID > 0 && n >= s.cfg.MaxConnsPerUID {
		s.unuse(cred.UID)
		s.mu.Unlock()
		s.warn(s.log, "connection refused: quota", "connection refused: quota", "pid", cred.PID, "uid", cred.UID, "conns", n)
		fc.Send(encodeError(CodeQuota, defaultErrno(CodeQuota),
			fmt.Sprintf("uid %d already has %d connections open (quota %d)", cred.UID, n, s.cfg.MaxConnsPerUID)))
		fc.Close()
		return
	}
	u.conns++
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go s.serve(c)
}

func (s *Server) use(uid int) *usage {
	u := s.usage[uid]
	if u == nil {
		u = &usage{}
		s.usage[uid] = u
	}
	return u
}

func (s *Server) unuse(uid int) {
	if u := s.usage[uid]; u != nil && *u == (usage{}) {
		delete(s.usage, uid)
	}
}

// serve reads and answers c's messages in order until it closes or sends
// something malformed, then drops every reference c held. Every fd a
// message brought is closed before the next one is read.
func (s *Server) serve(c *conn) {
	defer s.wg.Done()
	log := s.log.With("pid", c.cred.PID, "uid", c.cred.UID)
	defer s.dropConn(c, log)
	buf := make([]byte, MaxMessage)
	for {
		m, err := c.fc.Recv(buf, 1)
		if err != nil {
			switch {
			case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.Is(err, os.ErrClosed), errors.Is(err, unix.ECONNRESET):
			case errors.Is(err, fdpass.ErrFDLimit):
				// The packet was read whole and the fd it carried was
				// closed (fdpass did both): the connection is in step.
				// Answer this one request and go on.
				if !s.shortage(c, log, err) {
					return
				}
				continue
			case errors.Is(err, fdpass.ErrTruncated):
				s.fatal(c, log, CodeTooLarge, fmt.Sprintf("message longer than %d bytes or carrying more than one fd", MaxMessage))
			default:
				s.warn(log, "connection read failed", "connection read failed", "err", err)
			}
			return
		}
		if !s.begin(c) {
			m.Close() // it was answered with SHUTTING_DOWN
			return
		}
		ok := s.handle(c, log, buf[:m.N], &m)
		if !s.end(c) || !ok {
			return
		}
	}
}

// shortage answers a message whose fd could not be received because this
// process is out of fds: INTERNAL with EMFILE (or ENFILE).
func (s *Server) shortage(c *conn, log *slog.Logger, err error) bool {
	errno := unix.EMFILE
	errors.As(err, &errno)
	s.warn(log, "fd shortage", "out of file descriptors: refused the fd a message carried", "errno", unix.ErrnoName(errno))
	if !s.begin(c) {
		return false
	}
	ok := s.reply(c, encodeError(CodeInternal, errno, fmt.Sprintf(
		"the broker is out of file descriptors (%s) and could not receive the fd that came with the message; it was closed and nothing changed; retry later", unix.ErrnoName(errno))))
	return s.end(c) && ok
}

// handle answers one message. It closes every fd in m before it returns,
// on every path; false means the connection is over.
func (s *Server) handle(c *conn, log *slog.Logger, b []byte, m *fdpass.Msg) bool {
	defer m.Close()
	msg, perr := decode(b)
	if perr != nil {
		pe := perr.(*protoError)
		if pe.code.Fatal() {
			s.fatal(c, log, pe.code, pe.text)
			return false
		}
		if len(m.Files) > 0 { // only a REQUEST gets here, and it carries none
			s.fatal(c, log, CodeMalformed, fmt.Sprintf("%q message carries an fd; only RELEASE-FD may", msg.Type))
			return false
		}
		log.Info("invalid request", "err", pe.text)
		return s.reply(c, encodeError(pe.code, defaultErrno(pe.code), pe.text))
	}
	switch msg.Type {
	case msgRequest, msgPickup, msgRelease, msgReleaseFD, msgList:
	default:
		s.fatal(c, log, CodeMalformed, fmt.Sprintf("message type %q is one the broker sends, not a client", msg.Type))
		return false
	}
	// Only RELEASE-FD may carry an fd, and only one (Recv took at most one).
	if len(m.Files) > 0 && msg.Type != msgReleaseFD {
		s.fatal(c, log, CodeMalformed, fmt.Sprintf("%q message carries an fd; only RELEASE-FD may", msg.Type))
		return false
	}
	var out []byte
	var file *os.File
	switch msg.Type {
	case msgRequest:
		out, file = s.request(c, log, &msg.Request)
	case msgPickup:
		out, file = s.pickup(c, log, msg.Token)
	case msgRelease:
		out = s.releaseToken(c, log, msg.Token)
	case msgReleaseFD:
		if len(m.Files) != 1 {
			s.fatal(c, log, CodeMalformed, "RELEASE-FD carries no fd")
			return false
		}
		out = s.releaseFile(c, log, m.Files[0])
	case msgList:
		return s.list(c)
	}
	var serr error
	if file != nil {
		_, serr = c.fc.Send(out, file)
	} else {
		_, serr = c.fc.Send(out)
	}
	if serr != nil {
		// The client vanished mid-request; dropConn takes back what
		// it was granted.
		log.Info("reply failed; dropping the connection", "err", serr)
		return false
	}
	if len(out) >= headerLen+2 && out[1] == msgError && Code(binary.BigEndian.Uint16(out[headerLen:])) == CodeShuttingDown {
		c.mu.Lock()
		c.bye = true // that was the goodbye
		c.mu.Unlock()
		return false
	}
	return true
}

// begin marks c busy answering a request; false when the broker has
// already told c it is shutting down (that was the answer).
func (s *Server) begin(c *conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bye {
		return false
	}
	c.busy = true
	return true
}

// end marks c idle again; when the broker is stopping it sends
// SHUTTING_DOWN, the answer to c's next request, and says c is over.
func (s *Server) end(c *conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.busy = false
	if !s.stopping.Load() {
		return true
	}
	s.sayByeLocked(c)
	return false
}

// sayByeLocked sends SHUTTING_DOWN to c once. c.mu is held.
func (s *Server) sayByeLocked(c *conn) {
	if c.bye {
		return
	}
	c.bye = true
	c.fc.SetDeadline(time.Now().Add(byeTimeout))
	s.reply(c, encodeError(CodeShuttingDown, defaultErrno(CodeShuttingDown), "the broker is stopping; it closes this connection and every reference it held"))
}

// byeTimeout bounds the SHUTTING_DOWN send to a client that reads nothing.
const byeTimeout = time.Second

func (s *Server) reply(c *conn, b []byte) bool {
	_, err := c.fc.Send(b)
	return err == nil
}

// fatal sends a fatal error; the caller then closes the connection.
func (s *Server) fatal(c *conn, log *slog.Logger, code Code, text string) {
	s.warn(log, "closing connection: "+code.String(), "closing connection", "reason", code.String(), "detail", text)
	s.reply(c, encodeError(code, defaultErrno(code), text+"; closing the connection"))
}

// warn logs a warning of kind, rate-limited per kind (warnLimiter).
func (s *Server) warn(log *slog.Logger, kind, msg string, args ...any) {
	ok, reported, total, arm := s.warns.allow(kind)
	if reported > 0 {
		s.log.Warn("repeated warnings were left out", "kind", kind, "left_out", reported, "total", total)
	}
	if ok {
		log.Warn(msg, args...)
		return
	}
	if arm {
		time.AfterFunc(s.warns.every, func() { s.reportWarnings(false) })
	}
}

// reportWarnings logs how many warnings of each kind were left out.
func (s *Server) reportWarnings(all bool) {
	for kind, w := range s.warns.flush(all) {
		s.log.Warn("repeated warnings were left out", "kind", kind, "left_out", w.Suppressed, "total", w.Total)
	}
}

// dropConn closes c and releases every reference it held.
func (s *Server) dropConn(c *conn, log *slog.Logger) {
	c.fc.Close()
	s.mu.Lock()
	n := len(c.refs)
	for r := range c.refs {
		s.releaseLocked(r)
	}
	s.usage[c.cred.UID].conns--
	s.unuse(c.cred.UID)
	delete(s.conns, c)
	s.mu.Unlock()
	if n > 0 {
		log.Info("holder gone; references released", "refs", n)
	}
}

func newToken() (Token, error) {
	var t Token
	_, err := rand.Read(t[:])
	return t, err
}

// request answers a REQUEST: a GRANT (with the fd unless deferred) or an ERROR.
func (s *Server) request(c *conn, log *slog.Logger, r *Request) ([]byte, *os.File) {
	k := key{r.Proto, r.Addr}
	errorf := func(code Code, errno syscall.Errno, format string, a ...any) ([]byte, *os.File) {
		text := fmt.Sprintf(format, a...)
		log.Info("request refused", "socket", k.String(), "share", r.Share.String(), "app", r.App, "code", code.String(), "why", text)
		if errno == 0 {
			errno = defaultErrno(code)
		}
		return encodeError(code, errno, text), nil
	}
	if d := s.cfg.Rules.Check(c.cred.UID, c.cred.GID, r.Proto, r.Addr); !d.Allow {
		return errorf(CodeDenied, 0, "%s: %s", k, d.Reason)
	}
	tok, err := newToken()
	if err != nil {
		return errorf(CodeInternal, 0, "token: %v", err)
	}

	s.mu.Lock()
	if code, text := s.quotaLocked(c.cred.UID, r.Defer); code != 0 {
		s.mu.Unlock()
		return errorf(code, 0, "%s", text)
	}
	if e := s.cache[k]; e != nil && r.Addr.Port() != 0 {
		return s.grantLocked(c, log, e, r, tok)
	}
	s.mu.Unlock()

	// A miss: create it, once, whoever else asks meanwhile.
	s.createMu.Lock()
	defer s.createMu.Unlock()
	s.mu.Lock()
	if e := s.cache[k]; e != nil && r.Addr.Port() != 0 {
		if code, text := s.quotaLocked(c.cred.UID, r.Defer); code != 0 {
			s.mu.Unlock()
			return errorf(code, 0, "%s", text)
		}
		return s.grantLocked(c, log, e, r, tok)
	}
	gone, closed := s.creatorGone, s.closed
	s.mu.Unlock()
	if closed {
		return errorf(CodeShuttingDown, 0, "the broker is stopping")
	}
	if gone {
		return errorf(CodeCreatorGone, 0, "%s is not cached and the socket creator has exited, so no new socket can be made; cached sockets are still served. Restart porter up to bring the creator back", k)
	}
	// A port-0 request can get a port that a cached socket already has:
	// every socket the creator makes has SO_REUSEADDR, and for UDP the
	// kernel then picks among ports in use too. Such a socket cannot be
	// cached under its address; ask again for another port.
	for attempt := 1; ; attempt++ {
		f, err := s.cfg.Creator.Create(r.Proto, r.Addr)
		if err != nil {
			if errors.Is(err, ErrCreatorGone) {
				s.markCreatorGone(err)
				return errorf(CodeCreatorGone, 0, "%s: %v; cached sockets are still served. Restart porter up to bring the creator back", k, err)
			}
			if errors.Is(err, fdpass.ErrFDLimit) {
				// The broker's shortage, not the creator's: it is
				// still there and in step (creator.Client.Create).
				errno := unix.EMFILE
				errors.As(err, &errno)
				s.warn(log, "fd shortage", "out of file descriptors: could not receive a new socket from the creator", "socket", k.String(), "errno", unix.ErrnoName(errno))
				return errorf(CodeInternal, errno, "%s: the broker is out of file descriptors (%s) and could not receive the new socket from the creator; nothing changed and the creator is still running: retry later", k, unix.ErrnoName(errno))
			}
			var errno syscall.Errno
			errors.As(err, &errno)
			text := err.Error()
			if errno != 0 {
				text = fmt.Sprintf("%s: %s", k, text)
				// porter-creator's errors name the errno already.
				if name := "(" + unix.ErrnoName(errno) + ")"; !strings.Contains(text, name) {
					text += " " + name
				}
			}
			return errorf(CodeCreate, errno, "%s", text)
		}
		e, err := s.prepare(k, f)
		if err != nil {
			f.Close()
			var errno syscall.Errno
			errors.As(err, &errno)
			return errorf(CodeInternal, errno, "%s: %v", k, err)
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			e.file.Close()
			return errorf(CodeShuttingDown, 0, "the broker is stopping")
		}
		if s.cache[e.key] != nil {
			s.mu.Unlock()
			e.file.Close()
			if r.Addr.Port() == 0 && attempt < maxPortAttempts {
				continue
			}
			return errorf(CodeInternal, unix.EADDRINUSE, "%s: %d new sockets in a row got ports that cached sockets hold (the last: %s)", k, attempt, e.key)
		}
		if code, text := s.quotaLocked(c.cred.UID, r.Defer); code != 0 {
			s.mu.Unlock()
			e.file.Close()
			return errorf(code, 0, "%s", text)
		}
		s.cache[e.key] = e
		log.Info("socket created", "socket", e.key.String(), "ino", e.ino, "attempts", attempt)
		return s.grantLocked(c, log, e, r, tok)
	}
}

// maxPortAttempts bounds the new sockets one port-0 request may try.
const maxPortAttempts = 32

// prepare makes an entry of a fresh socket: the bound address it really
// has (a port-0 request gets one), its inode, and for TCP listen(2).
func (s *Server) prepare(k key, f *os.File) (*entry, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	var sa unix.Sockaddr
	var serr error
	var op string
	cerr := rc.Control(func(fd uintptr) {
		if op, serr = "fstat", unix.Fstat(int(fd), &st); serr != nil {
			return
		}
		if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			op, serr = "fstat", fmt.Errorf("the creator returned a non-socket: %w", unix.ENOTSOCK)
			return
		}
		op = "getsockname"
		if sa, serr = unix.Getsockname(int(fd)); serr != nil {
			return
		}
		if k.proto == TCP {
			op, serr = "listen", unix.Listen(int(fd), s.cfg.Backlog)
		}
	})
	if cerr != nil {
		return nil, cerr
	}
	if serr != nil {
		return nil, &net.OpError{Op: op, Net: k.proto.String(), Addr: netAddr(k.proto, k.addr), Err: os.NewSyscallError(op, serr)}
	}
	bound := k.addr
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		bound = netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		bound = netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
	}
	return &entry{key: key{k.proto, bound}, file: f, dev: uint64(st.Dev), ino: st.Ino, refs: map[*ref]struct{}{}, modes: map[mode]int{}}, nil
}

// quotaLocked checks uid's quotas for one more reference (and pending token).
func (s *Server) quotaLocked(uid int, pending bool) (Code, string) {
	u := s.usage[uid]
	if u == nil {
		return 0, ""
	}
	if s.cfg.MaxSocketsPerUID > 0 && u.refs >= s.cfg.MaxSocketsPerUID {
		return CodeQuota, fmt.Sprintf("uid %d already holds %d socket references (quota %d)", uid, u.refs, s.cfg.MaxSocketsPerUID)
	}
	if pending && s.cfg.MaxTokensPerUID > 0 && u.pending >= s.cfg.MaxTokensPerUID {
		return CodeQuota, fmt.Sprintf("uid %d already has %d tokens waiting for pickup (quota %d)", uid, u.pending, s.cfg.MaxTokensPerUID)
	}
	return 0, ""
}

// grantLocked adds a reference to e if the request may share it, and
// unlocks s.mu.
func (s *Server) grantLocked(c *conn, log *slog.Logger, e *entry, r *Request, tok Token) ([]byte, *os.File) {
	defer s.mu.Unlock()
	for h := range e.modes {
		if !Compatible(r.Share, r.App, h.share, h.app) {
			text := fmt.Sprintf("%s is held under share modes that do not allow this request (share=%s app=%q): %s",
				e.key, r.Share, r.App, describeHolders(e))
			log.Info("request refused", "socket", e.key.String(), "share", r.Share.String(), "app", r.App, "code", CodeConflict.String())
			return encodeError(CodeConflict, defaultErrno(CodeConflict), text), nil
		}
	}
	if _, dup := s.tokens[tok]; dup { // 2^-128; but never hand out one twice
		return encodeError(CodeInternal, 0, "token collision; retry"), nil
	}
	rf := &ref{tok: tok, e: e, share: r.Share, app: r.App, pid: c.cred.PID, uid: c.cred.UID, gid: c.cred.GID}
	if e.linger != nil {
		e.linger.Stop()
		e.linger = nil
		e.until = time.Time{}
		log.Info("lingering socket taken up again", "socket", e.key.String())
	}
	e.refs[rf] = struct{}{}
	e.modes[mode{rf.share, rf.app}]++
	s.tokens[tok] = rf
	u := s.use(c.cred.UID)
	u.refs++
	g := encodeGrant(&grant{Token: tok, Proto: e.key.proto, Addr: e.key.addr})
	if r.Defer {
		u.pending++
		rf.expires = time.Now().Add(s.cfg.TokenTTL)
		rf.timer = time.AfterFunc(s.cfg.TokenTTL, func() { s.expire(rf) })
		log.Debug("deferred token granted", "socket", e.key.String(), "token", tok.Short())
		return g, nil
	}
	rf.c = c
	c.refs[rf] = struct{}{}
	log.Debug("socket granted", "socket", e.key.String(), "token", tok.Short(), "refs", len(e.refs))
	return g, e.file
}

func describeHolders(e *entry) string {
	var parts []string
	for h := range e.refs {
		if len(parts) == 8 {
			parts = append(parts, fmt.Sprintf("and %d more", len(e.refs)-8))
			break
		}
		who := fmt.Sprintf("pid %d uid %d", h.pid, h.uid)
		if h.c == nil {
			who = fmt.Sprintf("pending token for uid %d", h.uid)
		}
		parts = append(parts, fmt.Sprintf("share=%s app=%q (%s)", h.share, h.app, who))
	}
	return strings.Join(parts, "; ")
}

// expire drops a deferred token nobody picked up in time.
func (s *Server) expire(rf *ref) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rf.c != nil || s.tokens[rf.tok] != rf {
		return // picked up or released meanwhile
	}
	s.log.Info("deferred token expired", "socket", rf.e.key.String(), "token", rf.tok.Short(), "uid", rf.uid)
	s.releaseLocked(rf)
}

// pickup answers a PICKUP: the deferred token's socket, now held by c.
func (s *Server) pickup(c *conn, log *slog.Logger, tok Token) ([]byte, *os.File) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rf := s.tokens[tok]
	if rf == nil || rf.c != nil || time.Now().After(rf.expires) {
		log.Info("pickup refused", "token", tok.Short())
		return encodeError(CodeNoToken, defaultErrno(CodeNoToken), "token "+tok.Short()+" is unknown, expired, or already picked up"), nil
	}
	if rf.uid != c.cred.UID {
		if code, text := s.quotaLocked(c.cred.UID, false); code != 0 {
			return encodeError(code, defaultErrno(code), text), nil
		}
	}
	rf.timer.Stop()
	u := s.usage[rf.uid]
	u.pending--
	u.refs--
	s.unuse(rf.uid)
	s.use(c.cred.UID).refs++
	rf.pid, rf.uid, rf.gid, rf.c = c.cred.PID, c.cred.UID, c.cred.GID, c
	rf.expires, rf.timer = time.Time{}, nil
	c.refs[rf] = struct{}{}
	log.Debug("token picked up", "socket", rf.e.key.String(), "token", tok.Short())
	return encodeGrant(&grant{Token: tok, Proto: rf.e.key.proto, Addr: rf.e.key.addr}), rf.e.file
}

// releaseToken answers a RELEASE. A token may be released by the
// connection that holds it, by a process of the uid it belongs to, or by
// root.
func (s *Server) releaseToken(c *conn, log *slog.Logger, tok Token) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	rf := s.tokens[tok]
	if rf == nil {
		return encodeError(CodeNoToken, defaultErrno(CodeNoToken), "token "+tok.Short()+" is unknown or already released")
	}
	if rf.c != c && rf.uid != c.cred.UID && c.cred.UID != 0 {
		log.Info("release refused", "token", tok.Short(), "owner", rf.uid)
		return encodeError(CodeNotYours, defaultErrno(CodeNotYours),
			fmt.Sprintf("token %s belongs to uid %d, not %d", tok.Short(), rf.uid, c.cred.UID))
	}
	log.Debug("released", "socket", rf.e.key.String(), "token", tok.Short())
	s.releaseLocked(rf)
	return encodeToken(msgDone, tok)
}

// releaseFile answers a RELEASE-FD: one reference this connection holds
// to the socket f is (same inode) goes.
func (s *Server) releaseFile(c *conn, log *slog.Logger, f *os.File) []byte {
	var st unix.Stat_t
	rc, err := f.SyscallConn()
	if err == nil {
		cerr := rc.Control(func(fd uintptr) { err = unix.Fstat(int(fd), &st) })
		if err == nil {
			err = cerr
		}
	}
	if err != nil {
		return encodeError(CodeInternal, unix.EBADF, "fstat of the released fd: "+err.Error())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for rf := range c.refs {
		if rf.e.ino == st.Ino && rf.e.dev == uint64(st.Dev) {
			log.Debug("released by fd", "socket", rf.e.key.String(), "token", rf.tok.Short())
			tok := rf.tok
			s.releaseLocked(rf)
			return encodeToken(msgDone, tok)
		}
	}
	return encodeError(CodeNotHeld, defaultErrno(CodeNotHeld), fmt.Sprintf("this connection holds no socket with inode %d", st.Ino))
}

// releaseLocked drops a reference; at zero the entry lingers or closes.
func (s *Server) releaseLocked(rf *ref) {
	if s.tokens[rf.tok] != rf {
		return
	}
	delete(s.tokens, rf.tok)
	u := s.usage[rf.uid]
	u.refs--
	if rf.c == nil {
		u.pending--
		if rf.timer != nil {
			rf.timer.Stop()
		}
	} else {
		delete(rf.c.refs, rf)
	}
	s.unuse(rf.uid)
	e := rf.e
	delete(e.refs, rf)
	if m := (mode{rf.share, rf.app}); e.modes[m] > 1 {
		e.modes[m]--
	} else {
		delete(e.modes, m)
	}
	if len(e.refs) > 0 || e.closed {
		return
	}
	if s.cfg.Linger > 0 && !s.closed {
		e.until = time.Now().Add(s.cfg.Linger)
		e.linger = time.AfterFunc(s.cfg.Linger, func() { s.endLinger(e) })
		s.log.Info("last reference gone; lingering", "socket", e.key.String(), "linger", s.cfg.Linger)
		return
	}
	s.closeEntryLocked(e)
}

func (s *Server) endLinger(e *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(e.refs) > 0 || e.closed || e.until.IsZero() || time.Now().Before(e.until) {
		return
	}
	s.closeEntryLocked(e)
}

func (s *Server) closeEntryLocked(e *entry) {
	if s.cache[e.key] == e {
		delete(s.cache, e.key)
	}
	if e.linger != nil {
		e.linger.Stop()
		e.linger = nil
	}
	e.closed = true
	e.file.Close()
	s.log.Info("socket closed", "socket", e.key.String())
}

// list streams the cache to c: SOCKET and HOLDER messages, then END.
func (s *Server) list(c *conn) bool {
	l := s.List()
	for i := range l.Sockets {
		si := &l.Sockets[i]
		if !s.reply(c, encodeSocket(si, len(si.Holders))) {
			return false
		}
		for j := range si.Holders {
			if !s.reply(c, encodeHolder(&si.Holders[j])) {
				return false
			}
		}
	}
	return s.reply(c, encodeEnd(len(l.Sockets), l.CreatorGone))
}

// List returns a snapshot of the cache, sorted by protocol and address.
func (s *Server) List() Listing {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	l := Listing{CreatorGone: s.creatorGone, Sockets: make([]SocketInfo, 0, len(s.cache))}
	for _, e := range s.cache {
		si := SocketInfo{Proto: e.key.proto, Addr: e.key.addr, Refs: len(e.refs), Holders: make([]HolderInfo, 0, len(e.refs))}
		if !e.until.IsZero() {
			si.Linger = max(e.until.Sub(now).Milliseconds(), 1)
		}
		for rf := range e.refs {
			h := HolderInfo{PID: rf.pid, UID: rf.uid, GID: rf.gid, State: Held, Share: rf.share, App: rf.app}
			copy(h.TokenPrefix[:], rf.tok[:4])
			if rf.c == nil {
				h.State = Pending
				h.Expires = max(rf.expires.Sub(now).Milliseconds(), 0)
			}
			si.Holders = append(si.Holders, h)
		}
		sortHolders(si.Holders)
		l.Sockets = append(l.Sockets, si)
	}
	sortSockets(l.Sockets)
	return l
}

func (s *Server) watchCreator(done <-chan struct{}) {
	defer s.wg.Done()
	select {
	case <-done:
		s.markCreatorGone(errors.New("the creator process exited"))
	case <-s.stop:
	}
}

func (s *Server) markCreatorGone(why error) {
	s.mu.Lock()
	already, closed := s.creatorGone, s.closed
	s.creatorGone = true
	n := len(s.cache)
	s.mu.Unlock()
	if !already && !closed {
		s.log.Error("SOCKET CREATOR GONE: no new sockets can be created until porter up is restarted; cached sockets are still served",
			"err", why, "cached", n)
	}
}

// CreatorGone reports whether the creator has exited.
func (s *Server) CreatorGone() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.creatorGone
}

// Close stops serving: it closes the listeners, sends SHUTTING_DOWN to
// every connection (after the answer to a request being served, or as the
// answer to the next one) and closes it, waits for their goroutines, and
// closes every cached socket. Holders keep their own copies.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.stopping.Store(true)
	close(s.stop)
	for l := range s.listeners {
		l.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.mu.Lock()
		if c.busy {
			// Its goroutine answers the request, then says goodbye
			// (end); bound what it sends to a client that reads nothing.
			c.fc.SetDeadline(time.Now().Add(byeTimeout))
		} else {
			s.sayByeLocked(c)
			c.fc.Close()
		}
		c.mu.Unlock()
	}
	s.wg.Wait()
	s.reportWarnings(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rf := range s.tokens {
		s.releaseLocked(rf)
	}
	for _, e := range s.cache {
		s.closeEntryLocked(e)
	}
	return nil
}

// Shutdown is Close bounded by ctx: it returns ctx's error if the
// connections do not finish in time (they are closed either way).
func (s *Server) Shutdown(ctx context.Context) error {
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (k key) String() string { return k.proto.String() + "://" + k.addr.String() }

func netAddr(p Proto, a netip.AddrPort) net.Addr {
	if p == UDP {
		return net.UDPAddrFromAddrPort(a)
	}
	return net.TCPAddrFromAddrPort(a)
}
