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
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/porter-ipc/porter/fdpass"
	"github.com/porter-ipc/porter/internal/acceptloop"
	"github.com/porter-ipc/porter/internal/sockpath"
)

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
	Policy      Policy          // who may have which socket; nil: Rules.Policy()
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
	clock clock        // token expiry and linger run on it

	wg sync.WaitGroup
}

// New returns a Server with cfg, not yet serving.
func New(cfg Config) (*Server, error) {
	if cfg.Creator == nil {
		return nil, errors.New("broker: Config.Creator is nil")
	}
	if cfg.Policy == nil {
		cfg.Policy = cfg.Rules.Policy()
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
		clock:     wallClock{},
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
// takes ownership of l. l must yield Unix connections (a connection of
// another kind is closed and logged). A temporary accept failure (fd or
// memory shortage) is logged, rate-limited, and retried after a growing
// pause (internal/acceptloop).
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
	return acceptloop.Run(l, func(c net.Conn) {
		uc, ok := c.(*net.UnixConn)
		if !ok {
			c.Close()
			s.warn(s.log, "connection refused", "connection refused: the listener yields no Unix connections", "type", fmt.Sprintf("%T", c))
			return
		}
		fc, err := fdpass.NewConn(uc) // closes uc when it fails
		if err != nil {
			s.warn(s.log, "connection refused", "connection refused", "err", err)
			return
		}
		s.ServeConn(fc)
	}, acceptloop.Options{
		Stop: s.stop,
		Log:  func(err error) { s.warn(s.log, "accept failed", "accept failed; retrying", "err", err) },
	})
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
	u := s.usageOf(cred.UID)
	if n := u.conns; s.cfg.MaxConnsPerUID > 0 && n >= s.cfg.MaxConnsPerUID {
		s.forgetIfIdle(cred.UID)
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
