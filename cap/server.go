package cap

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"runtime/debug"
	"sync"
	"time"

	"github.com/porter-ipc/porter/fdpass"
	"github.com/porter-ipc/porter/internal/fdutil"
	"golang.org/x/sys/unix"
)

// Server serves exported objects: a door per object, a session per
// (client process, object), calls run concurrently (at most MaxCalls per
// session). Its methods are safe for concurrent use.
type Server struct {
	mu     sync.Mutex
	objs   map[doorKey]*object
	closed bool
	wg     sync.WaitGroup
	// ErrorLog, when set before Export, receives what the server drops
	// (malformed frames, sessions it could not take).
	ErrorLog func(format string, args ...any)
}

// NewServer returns a server with no objects.
func NewServer() *Server { return &Server{objs: map[doorKey]*object{}} }

// Methods is an object made of single handler funcs, by method name:
// each is a func(context.Context, A) (R, error), as for Export.
type Methods map[string]any

// object is one exported object.
type object struct {
	srv     *Server
	key     doorKey
	cookie  uint64
	methods map[string]method
	door    *fdpass.Conn // door-server

	mu       sync.Mutex
	sessions map[*ssession]struct{}
	done     bool
}

type method struct {
	fn   reflect.Value
	argT reflect.Type
}

var (
	ctxType = reflect.TypeFor[context.Context]()
	errType = reflect.TypeFor[error]()
)

// methodsOf collects obj's methods of the form
// func(ctx context.Context, args A) (R, error).
func methodsOf(obj any) (map[string]method, error) {
	ms := map[string]method{}
	add := func(name string, fn reflect.Value) bool {
		t := fn.Type()
		if t.Kind() != reflect.Func || t.NumIn() != 2 || t.In(0) != ctxType || t.NumOut() != 2 || t.Out(1) != errType || !validName(name) {
			return false
		}
		ms[name] = method{fn: fn, argT: t.In(1)}
		return true
	}
	if m, ok := obj.(Methods); ok {
		for name, f := range m {
			if !add(name, reflect.ValueOf(f)) {
				return nil, fmt.Errorf("cap: Methods[%q] is a %T, want func(context.Context, A) (R, error)", name, f)
			}
		}
	} else {
		v := reflect.ValueOf(obj)
		if !v.IsValid() {
			return nil, errors.New("cap: Export(nil)")
		}
		t := v.Type()
		for i := 0; i < t.NumMethod(); i++ {
			add(t.Method(i).Name, v.Method(i))
		}
	}
	if len(ms) == 0 {
		return nil, fmt.Errorf("cap: %T has no method of the form func(context.Context, A) (R, error)", obj)
	}
	return ms, nil
}

// Export makes obj callable and returns the first Ref to it. obj's
// exported methods of the form func(ctx context.Context, args A) (R,
// error) become callable by name (or, for a Methods map, its funcs). The
// object lives while any process holds a Ref to it; the server forgets it
// when the last is closed, or at Revoke or Close.
func (srv *Server) Export(obj any) (*Ref, error) {
	ms, err := methodsOf(obj)
	if err != nil {
		return nil, err
	}
	ds, dc, err := fdpass.Socketpair(unix.SOCK_SEQPACKET)
	if err != nil {
		return nil, fmt.Errorf("cap: Export: %w", err)
	}
	var cb [8]byte
	rand.Read(cb[:])
	o := &object{srv: srv, cookie: binary.LittleEndian.Uint64(cb[:]), methods: ms, door: ds, sessions: map[*ssession]struct{}{}}
	ref, err := adoptDoor(dc.Socket().(*os.File))
	if err != nil {
		ds.Close()
		return nil, err
	}
	o.key = ref.d.key
	srv.mu.Lock()
	if srv.closed {
		srv.mu.Unlock()
		ds.Close()
		ref.Close()
		return nil, errors.New("cap: Export on a closed Server")
	}
	srv.objs[o.key] = o
	srv.wg.Add(1)
	srv.mu.Unlock()
	go o.serveDoor()
	return ref, nil
}

func (srv *Server) logf(format string, args ...any) {
	if srv.ErrorLog != nil {
		srv.ErrorLog(format, args...)
	}
}

// Revoke ends the object r leads to, for every holder at once: each
// session gets REVOKED and is closed, the door is closed, calls running
// see their context canceled. r stays open (Close it as usual).
func (srv *Server) Revoke(r *Ref) error {
	if _, err := r.door(); err != nil {
		return err
	}
	srv.mu.Lock()
	o, ok := srv.objs[r.d.key]
	srv.mu.Unlock()
	if !ok {
		return errors.New("cap: Revoke: not an object of this server (or already gone)")
	}
	o.end(true)
	return nil
}

// Close ends every object without REVOKED (holders see SERVER_GONE, as
// when the process dies) and waits until every goroutine of the server
// has returned, method calls included.
func (srv *Server) Close() error {
	srv.mu.Lock()
	srv.closed = true
	objs := make([]*object, 0, len(srv.objs))
	for _, o := range srv.objs {
		objs = append(objs, o)
	}
	srv.mu.Unlock()
	for _, o := range objs {
		o.end(false)
	}
	srv.wg.Wait()
	return nil
}

// end forgets the object: with revoke, its sessions get REVOKED first.
func (o *object) end(revoke bool) {
	o.mu.Lock()
	if o.done {
		o.mu.Unlock()
		return
	}
	o.done = true
	ss := make([]*ssession, 0, len(o.sessions))
	for s := range o.sessions {
		ss = append(ss, s)
	}
	o.mu.Unlock()
	o.srv.mu.Lock()
	delete(o.srv.objs, o.key)
	o.srv.mu.Unlock()
	o.door.Close()
	for _, s := range ss {
		if revoke {
			s.revoke()
		}
		s.close()
	}
}

// serveDoor reads OPENs from door-server until the door closes.
func (o *object) serveDoor() {
	defer o.srv.wg.Done()
	buf := make([]byte, headerLen+1)
	for {
		m, err := o.door.Recv(buf, 1)
		if err != nil {
			if errors.Is(err, fdpass.ErrTruncated) || errors.Is(err, fdpass.ErrFDLimit) || errors.Is(err, fdpass.ErrWouldBlock) {
				// A bad OPEN (its fds are closed), or one whose
				// session we had no room for: the client sees the
				// session end and retries.
				o.srv.logf("cap: door %x: %v", o.cookie, err)
				continue
			}
			// io.EOF: every door-client fd is closed, nobody can
			// reach the object any more. Or the door was closed.
			o.end(false)
			return
		}
		h, _, _, perr := parseFrame(buf[:m.N])
		if perr == nil && (h.typ != tOpen || len(m.Files) != 1) {
			perr = malformed("%s on a door", typeNames[h.typ])
		}
		if perr != nil {
			o.srv.logf("cap: door %x: %v", o.cookie, perr)
			m.Close()
			continue
		}
		o.accept(m.Files[0])
	}
}

// accept binds the received session socket f to the object.
func (o *object) accept(f *os.File) {
	c, err := sessionConn(f)
	if err != nil {
		o.srv.logf("cap: door %x: session: %v", o.cookie, err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &ssession{o: o, l: newLink(c), ctx: ctx, cancel: cancel, running: map[uint64]context.CancelFunc{}}
	o.mu.Lock()
	if o.done {
		o.mu.Unlock()
		c.Close()
		cancel()
		return
	}
	o.sessions[s] = struct{}{}
	o.srv.wg.Add(1)
	o.mu.Unlock()
	go s.serve()
}

// sessionConn makes a received session fd a non-blocking fdpass.Conn,
// checking it is a SOCK_SEQPACKET Unix socket. It takes ownership of f.
func sessionConn(f *os.File) (*fdpass.Conn, error) {
	var typ int
	nonblock := false
	err := fdutil.Control(f, func(fd int) error {
		var err error
		if typ, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil {
			return os.NewSyscallError("getsockopt", err)
		}
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil {
			return os.NewSyscallError("fcntl", err)
		}
		nonblock = fl&unix.O_NONBLOCK != 0
		return nil
	})
	if err == nil && typ != unix.SOCK_SEQPACKET {
		err = fmt.Errorf("session socket of type %d, want SOCK_SEQPACKET", typ)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	if !nonblock {
		// A client that made a blocking socket: a non-blocking copy
		// that Go's netpoller can wait on.
		fd, err := fdutil.DupCloexec(f)
		f.Close()
		if err != nil {
			return nil, err
		}
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
			return nil, os.NewSyscallError("fcntl", err)
		}
		f = os.NewFile(uintptr(fd), "cap-session")
	}
	return fdpass.NewConn(f)
}

// ssession is the server's end of one session.
type ssession struct {
	o      *object
	l      *link
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	running map[uint64]context.CancelFunc
	closed  bool
	readers int        // reader goroutines not serving a call
	rmu     sync.Mutex // the readers' turn
}

// revoke sends REVOKED if the session has room for it (a server waits for
// no client): writers blocked on a client that does not read are made to
// give up first, and the session is closed next anyway.
func (s *ssession) revoke() {
	s.l.sock.SetWriteDeadline(time.Now())
	s.l.wmu.Lock()
	s.l.sendNow(header{typ: tRevoked})
	s.l.wmu.Unlock()
}

func (s *ssession) close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	// The socket first: a call its cancelled context ends must find the
	// session closed, not answer "context canceled" to a client that is
	// to see the server gone (TestPythonClientServerGone, 1 run in 20).
	s.l.close()
	s.cancel()
	s.o.mu.Lock()
	delete(s.o.sessions, s)
	s.o.mu.Unlock()
}

// serve sends OPENED and reads the session's frames.
func (s *ssession) serve() {
	defer s.o.srv.wg.Done()
	var body [8]byte
	binary.LittleEndian.PutUint64(body[:], s.o.cookie)
	if err := s.l.write(s.ctx, header{typ: tOpened}, "", body[:], nil); err != nil {
		s.close()
		return
	}
	s.mu.Lock()
	s.readers = 1
	s.mu.Unlock()
	s.readLoop()
}

// readLoop is one of the session's reader goroutines. Readers take turns
// (rmu): the one that reads a call serves it itself, with no hand-off,
// while another reads on; when none is left to read, one more starts.
// After a call a reader waits for its turn again, or ends when two wait
// already. So a lone client's calls cost no goroutine switch in the
// server, and a slow call never keeps other calls or CANCELs waiting.
func (s *ssession) readLoop() {
	for {
		c, ok := s.next()
		if !ok {
			return
		}
		s.call(c.ctx, c.id, c.name, c.args)
		s.mu.Lock()
		if s.readers >= 2 || s.closed {
			s.mu.Unlock()
			return
		}
		s.readers++
		s.mu.Unlock()
	}
}

// inCall is a call read and registered, to be served.
type inCall struct {
	ctx  context.Context
	id   uint64
	name string
	args *received
}

// next reads frames, in turn with the session's other readers, until one
// is a call to serve (then it is registered as running, and the caller no
// longer counts as a reader) or the session ends (false). The bookkeeping
// of each frame happens in its turn, so frames take effect in order: a
// CANCEL finds the call it follows.
func (s *ssession) next() (inCall, bool) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	end := func() (inCall, bool) {
		s.close()
		s.mu.Lock()
		s.readers--
		s.mu.Unlock()
		return inCall{}, false
	}
	for {
		f, err := s.l.read()
		if err != nil {
			var fl *fdLimitError
			if errors.As(err, &fl) && fl.h.typ == tCall && fl.h.nfds <= fdsPerPacket {
				// The fds of this call found no room: refuse it, serve on.
				s.answerError(fl.h.id, Internal, "the server is out of fds (EMFILE): "+err.Error())
				continue
			}
			if err != io.EOF && !errors.Is(err, os.ErrClosed) {
				s.o.srv.logf("cap: session of %x: %v", s.o.cookie, err)
			}
			return end()
		}
		switch f.typ {
		case tCall:
			s.mu.Lock()
			if _, dup := s.running[f.id]; dup {
				s.mu.Unlock()
				f.closeFiles()
				s.o.srv.logf("cap: session of %x: call id %d already running", s.o.cookie, f.id)
				return end()
			}
			if len(s.running) >= MaxCalls {
				s.mu.Unlock()
				f.closeFiles()
				// Written by the reader: a client that reads none of
				// its answers stops the reading here.
				s.answerError(f.id, Overloaded, fmt.Sprintf("%d calls running", MaxCalls))
				continue
			}
			ctx, cancel := context.WithCancel(s.ctx)
			s.running[f.id] = cancel
			s.o.srv.wg.Add(1)
			s.readers--
			spawn := s.readers == 0
			if spawn {
				s.readers++
				s.o.srv.wg.Add(1)
			}
			s.mu.Unlock()
			if spawn {
				go func() {
					defer s.o.srv.wg.Done()
					s.readLoop()
				}()
			}
			return inCall{ctx, f.id, string(f.name), receive(append([]byte(nil), f.body...), f.files)}, true
		case tCancel:
			s.mu.Lock()
			if cancel := s.running[f.id]; cancel != nil {
				cancel()
			}
			s.mu.Unlock()
		case tClose:
			return end()
		default:
			f.closeFiles()
			s.o.srv.logf("cap: session of %x: %s from a client", s.o.cookie, typeNames[f.typ])
			return end()
		}
	}
}

func (s *ssession) answerError(id uint64, code Code, msg string) {
	if len(msg) > MaxFrame-headerLen {
		msg = msg[:MaxFrame-headerLen]
	}
	s.l.write(s.ctx, header{typ: tError, id: id, code: uint32(code)}, "", []byte(msg), nil)
}

// call runs one call and answers it.
func (s *ssession) call(ctx context.Context, id uint64, name string, args *received) {
	defer s.o.srv.wg.Done()
	defer func() {
		s.mu.Lock()
		cancel := s.running[id]
		delete(s.running, id)
		s.mu.Unlock()
		if cancel != nil {
			cancel()
		}
	}()
	m, ok := s.o.methods[name]
	if !ok {
		args.close()
		s.answerError(id, UnknownMethod, name)
		return
	}
	arg := reflect.New(m.argT)
	if err := args.decode(arg.Interface()); err != nil {
		s.answerError(id, BadArgs, err.Error())
		return
	}
	res, err := s.invoke(ctx, m, arg.Elem())
	if err != nil {
		code := Application
		var ce *Error
		if errors.As(err, &ce) && ce.Code == Internal {
			code = Internal
		}
		s.answerError(id, code, err.Error())
		return
	}
	rbody, rfiles, plain, err := encodeValue(res)
	if err != nil {
		closePlain(reflect.ValueOf(res), 0)
		if errors.Is(err, errTooManyFDs) {
			s.answerError(id, TooLarge, "the result: "+err.Error())
		} else {
			s.answerError(id, Internal, "the result does not encode: "+err.Error())
		}
		return
	}
	if headerLen+len(rbody) > MaxFrame || len(rfiles) > MaxFDs {
		closeFiles(plain)
		s.answerError(id, TooLarge, fmt.Sprintf("result of %d bytes and %d fds", len(rbody), len(rfiles)))
		return
	}
	err = s.l.write(s.ctx, header{typ: tReply, id: id}, "", rbody, rfiles)
	// The method gave the plain files it returned; its Refs stay its own.
	closeFiles(plain)
	if err != nil && errors.Is(err, ErrFDLimit) {
		s.answerError(id, Internal, err.Error())
	}
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// invoke calls the method, turning a panic into an INTERNAL error.
func (s *ssession) invoke(ctx context.Context, m method, arg reflect.Value) (res any, err error) {
	defer func() {
		if p := recover(); p != nil {
			s.o.srv.logf("cap: panic in a method of %x: %v\n%s", s.o.cookie, p, debug.Stack())
			res, err = nil, &Error{Code: Internal, Msg: "the method panicked"}
		}
	}()
	out := m.fn.Call([]reflect.Value{reflect.ValueOf(ctx), arg})
	if e := out[1].Interface(); e != nil {
		closePlain(out[0], 0) // a result beside an error is dropped
		return nil, e.(error)
	}
	return out[0].Interface(), nil
}
