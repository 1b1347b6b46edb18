// Package ipc runs local services: servers on a Unix socket that know who
// their clients are (SO_PEERCRED, checked by the kernel) and decide with
// s6-style access rules (package access), or a Policy of the embedder's,
// whether to serve them, and the
// clients that connect to them. It is porter's UCSPI super-server as a
// library: the same Server runs a handler in-process for every
// connection, or, with Spawn, a program per connection with the
// connection on its stdin and stdout and s6-ipcserver's environment.
//
// Both ends may pass fds on the connection (Conn.Send, Conn.Recv), and a
// server may hand a client an extra, unbound channel (Conn.OfferChannel,
// Conn.AcceptChannel; the message is in docs/protocol-ipc.md).
//
// Limits follow s6-ipcserverd: at MaxConns open connections the server
// stops accepting, so new clients wait in the listen backlog; a client
// whose uid already has MaxPerUID connections is accepted and closed at
// once; a client the rules deny is closed before the handler runs.
package ipc

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"

	"github.com/porter-ipc/porter/access"
	"github.com/porter-ipc/porter/fdpass"
	"github.com/porter-ipc/porter/internal/acceptloop"
)

// Defaults of s6-ipcserverd.
const (
	DefaultMaxConns  = 40
	DefaultMaxPerUID = 40
)

// ErrServerClosed is returned by Serve after Close or Shutdown.
var ErrServerClosed = errors.New("ipc: server closed")

// Handler serves one connection. The Server closes the Conn when
// ServeIPC returns.
type Handler interface {
	ServeIPC(c *Conn)
}

// HandlerFunc lets an ordinary function be a Handler.
type HandlerFunc func(c *Conn)

// ServeIPC calls f(c).
func (f HandlerFunc) ServeIPC(c *Conn) { f(c) }

// EventKind says what became of a connection.
type EventKind string

// The kinds of Event; each is the word porter's logs use for it.
const (
	EventAllow EventKind = "allow" // served
	EventDeny  EventKind = "deny"  // refused by the access rules
	EventLimit EventKind = "limit" // refused: its uid has MaxPerUID connections
	EventError EventKind = "error" // failed before it was served, or Accept failed
)

// String returns k's word, as in porter's logs.
func (k EventKind) String() string { return string(k) }

// Policy decides from a client's credentials (SO_PEERCRED, checked by
// the kernel) whether a Server serves it. A denial's Reason and Err go to
// the Server's Log; an allowed client's Env and Exec go to its program
// (Conn.Env, Spawn). It runs on the connection's goroutine, for each
// connection, and must be safe for concurrent use. The access rules are
// the default (RulesPolicy); broker.Policy is the broker's counterpart.
type Policy func(cred fdpass.Cred) access.Decision

// RulesPolicy is the Policy of access rules rs (access.Decide): the
// default of a Server with Rules set.
func RulesPolicy(rs access.Ruleset) Policy {
	return func(cred fdpass.Cred) access.Decision { return access.Decide(rs, cred.UID, cred.GID) }
}

// policy returns the Policy in force, nil for none.
func (s *Server) policy() Policy {
	switch {
	case s.Policy != nil:
		return s.Policy
	case s.Rules != nil:
		return RulesPolicy(s.Rules)
	}
	return nil
}

// Event is what a Server reports to its Log about each connection.
type Event struct {
	Kind  EventKind
	Peer  fdpass.Cred // the client (zero when unknown)
	Count int         // connections from Peer.UID, this one included
	Open  int         // connections open in all, this one included
	Rule  string      // the Policy's Reason: the access rule that decided, if any
	Err   error       // for EventError, and for EventDeny when the Policy failed
}

// Server accepts connections and runs Handler for each allowed client.
// Set its fields before Serve and do not change them after.
type Server struct {
	Handler Handler
	// Policy decides who is served. Nil means Rules; with both nil,
	// everyone the socket's permissions let connect is served.
	Policy Policy
	// Rules are the access rules of the default Policy (RulesPolicy).
	Rules access.Ruleset
	// MaxConns bounds open connections (0: DefaultMaxConns).
	MaxConns int
	// MaxPerUID bounds open connections of one uid (0: DefaultMaxPerUID).
	MaxPerUID int
	// Log, if set, is called for every connection's fate. It must not
	// block for long: it runs on the connection's goroutine.
	Log func(Event)

	once      sync.Once
	sem       chan struct{}
	done      chan struct{}
	mu        sync.Mutex
	closed    bool
	listeners map[*Listener]struct{}
	conns     map[*Conn]struct{}
	perUID    map[int]int
	wg        sync.WaitGroup
}

func (s *Server) init() {
	s.once.Do(func() {
		n := s.MaxConns
		if n <= 0 {
			n = DefaultMaxConns
		}
		s.sem = make(chan struct{}, n)
		s.done = make(chan struct{})
		s.listeners = map[*Listener]struct{}{}
		s.conns = map[*Conn]struct{}{}
		s.perUID = map[int]int{}
	})
}

func (s *Server) log(e Event) {
	if s.Log != nil {
		s.Log(e)
	}
}

// Serve accepts connections on l until Close or Shutdown, which also
// close l. It returns ErrServerClosed then, or the error that stopped it.
func (s *Server) Serve(l *Listener) error {
	s.init()
	if s.Handler == nil {
		return errors.New("ipc: Server.Handler is nil")
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()

	err := acceptloop.Run(l, s.accepted, acceptloop.Options{
		Stop:  s.done,
		Slots: s.sem, // at MaxConns, clients wait in the backlog
		// Out of fds or memory: the backlog holds clients while the
		// loop waits for some to go.
		Log: func(err error) { s.log(Event{Kind: EventError, Err: err}) },
	})
	select {
	case <-s.done:
		return ErrServerClosed
	default:
	}
	if err == nil { // l was closed, not by s
		return &net.OpError{Op: "accept", Net: "unix", Addr: l.Addr(), Err: net.ErrClosed}
	}
	return err
}

// accepted starts serving a connection the accept loop took a slot of
// s.sem for.
func (s *Server) accepted(c net.Conn) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		<-s.sem
		return
	}
	s.wg.Add(1) // under mu, so never after Shutdown's Wait began
	s.mu.Unlock()
	go s.serve(c.(*net.UnixConn)) // a UnixListener's Accept yields them
}

func (s *Server) serve(uc *net.UnixConn) {
	defer s.wg.Done()
	defer func() { <-s.sem }()
	c, err := newConn(uc)
	if err != nil {
		s.log(Event{Kind: EventError, Err: err})
		return
	}
	// Go renders an unbound peer (the usual client) as "@", and an
	// abstract address as "@name"; s6 sees both as no path.
	if a, ok := uc.RemoteAddr().(*net.UnixAddr); ok && a != nil && !strings.HasPrefix(a.Name, "@") {
		c.remotePath = a.Name
	}
	if a, ok := uc.LocalAddr().(*net.UnixAddr); ok && a != nil {
		c.localPath = a.Name
	}
	uid := c.peer.UID
	maxPer := s.MaxPerUID
	if maxPer <= 0 {
		maxPer = DefaultMaxPerUID
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return
	}
	n := s.perUID[uid]
	if n >= maxPer {
		open := len(s.conns)
		s.mu.Unlock()
		c.Close()
		s.log(Event{Kind: EventLimit, Peer: c.peer, Count: n, Open: open})
		return
	}
	s.perUID[uid] = n + 1
	c.connNum = n + 1
	s.conns[c] = struct{}{}
	open := len(s.conns)
	s.mu.Unlock()
	defer func() {
		c.Close()
		s.mu.Lock()
		delete(s.conns, c)
		if s.perUID[uid]--; s.perUID[uid] <= 0 {
			delete(s.perUID, uid)
		}
		s.mu.Unlock()
	}()

	ev := Event{Kind: EventAllow, Peer: c.peer, Count: c.connNum, Open: open}
	if p := s.policy(); p != nil {
		d := p(c.peer)
		c.decided, c.decision = true, d
		ev.Rule = d.Reason
		if d.Err != nil || !d.Allow {
			ev.Kind, ev.Err = EventDeny, d.Err
			s.log(ev)
			return
		}
	}
	s.log(ev)
	s.Handler.ServeIPC(c)
}

// Close stops the server: it closes its listeners (removing their socket
// files) and every open connection. Handlers still running see their
// Conn fail and should return.
func (s *Server) Close() error {
	s.init()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
	for c := range s.conns {
		c.Close()
	}
	return nil
}

func (s *Server) stopLocked() {
	if !s.closed {
		s.closed = true
		close(s.done)
	}
	for l := range s.listeners {
		l.Close()
		delete(s.listeners, l)
	}
}

// Shutdown closes the listeners, then waits for running handlers to
// return, or for ctx to end: then it closes the open connections and
// returns ctx's error without waiting further.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.mu.Lock()
	s.stopLocked()
	s.mu.Unlock()
	idle := make(chan struct{})
	go func() { s.wg.Wait(); close(idle) }()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		s.Close()
		return ctx.Err()
	}
}

// Open returns the number of connections being served.
func (s *Server) Open() int {
	s.init()
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}
