package cap

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/porter-ipc/porter/fdpass"
	"github.com/porter-ipc/porter/internal/fdutil"
	"golang.org/x/sys/unix"
)

// Ref is a capability: the right to call one object, held as an fd of the
// object's door. A process keeps one fd per object however many Refs it
// has to it (they are counted); the fd closes with the last Ref's Close.
// A Ref's methods are safe for concurrent use.
type Ref struct {
	d      *door
	closed atomic.Bool
}

// doorKey identifies a door by its socket's inode, which every copy of
// the door shares.
type doorKey struct{ dev, ino uint64 }

// door is the one fd this process holds of an object's door, and its
// session.
type door struct {
	key  doorKey
	conn *fdpass.Conn // the door-client socket
	file *os.File
	refs int // Refs open, under doors.mu

	mu      sync.Mutex
	sess    *session
	opening chan struct{} // closed when the open under way ends
	revoked bool          // a session saw REVOKED
	closed  bool
	done    chan struct{} // closed by close(); ends opens and watches

	watchOnce sync.Once
	watchDone chan struct{}
	watchErr  error
}

// doors is the process's table of the doors it holds, by inode. (A list
// per inode: sockfs numbers inodes with a counter that can wrap, so two
// live sockets may share one; kcmp tells them apart.)
var doors = struct {
	sync.Mutex
	m map[doorKey][]*door
}{m: map[doorKey][]*door{}}

var errNotDoor = errors.New("a ref's fd is not a SOCK_SEQPACKET socket")

// adoptDoor takes f, a received door fd, and returns a Ref to it: a new
// door, or one more reference to the door this process already holds
// with the same inode (then f is closed). adoptDoor takes ownership of f
// whatever happens.
func adoptDoor(f *os.File) (*Ref, error) {
	var st unix.Stat_t
	var typ int
	err := fdutil.Control(f, func(fd int) error {
		if err := unix.Fstat(fd, &st); err != nil {
			return os.NewSyscallError("fstat", err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			return errNotDoor
		}
		var err error
		typ, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		if err != nil {
			return os.NewSyscallError("getsockopt SO_TYPE", err)
		}
		return nil
	})
	if err == nil && typ != unix.SOCK_SEQPACKET {
		err = errNotDoor
	}
	if err != nil {
		f.Close()
		return nil, &Error{Code: BadArgs, Msg: "bad door", Err: err}
	}
	key := doorKey{uint64(st.Dev), st.Ino}
	doors.Lock()
	defer doors.Unlock()
	for _, d := range doors.m[key] {
		if sameFile(d.file, f) {
			d.refs++
			f.Close()
			return &Ref{d: d}, nil
		}
	}
	c, err := fdpass.NewConn(f)
	if err != nil {
		return nil, &Error{Code: BadArgs, Msg: "bad door", Err: err}
	}
	d := &door{key: key, conn: c, file: f, refs: 1, done: make(chan struct{})}
	doors.m[key] = append(doors.m[key], d)
	return &Ref{d: d}, nil
}

// sameFile reports whether a and b are fds of one open file description,
// as every copy of a door passed with SCM_RIGHTS is (kcmp(2) KCMP_FILE).
// Without kcmp (a kernel built without it) the shared inode has to do.
func sameFile(a, b *os.File) bool {
	same := true
	fdutil.Control(a, func(fa int) error {
		return fdutil.Control(b, func(fb int) error {
			pid := uintptr(os.Getpid())
			r, _, errno := unix.Syscall6(unix.SYS_KCMP, pid, pid, kcmpFile, uintptr(fa), uintptr(fb), 0)
			if errno == 0 {
				same = r == 0
			}
			return nil
		})
	})
	return same
}

// kcmpFile is KCMP_FILE of <linux/kcmp.h>.
const kcmpFile = 0

// door returns the door's fd for sending, or ErrClosed.
func (r *Ref) door() (*os.File, error) {
	if r == nil || r.closed.Load() {
		return nil, &Error{Code: Closed, Msg: "Ref used after Close"}
	}
	return r.d.file, nil
}

// Close gives up this Ref. The last Ref of a door in the process closes
// its session (sending CLOSE) and its fd; the object dies when every
// process has done so and its server holds no Ref of its own. Close is
// idempotent; the Ref's calls in flight fail with ErrClosed.
func (r *Ref) Close() error {
	if r == nil || r.closed.Swap(true) {
		return nil
	}
	d := r.d
	doors.Lock()
	d.refs--
	last := d.refs == 0
	if last {
		l := doors.m[d.key]
		for i, x := range l {
			if x == d {
				l = append(l[:i], l[i+1:]...)
				break
			}
		}
		if len(l) == 0 {
			delete(doors.m, d.key)
		} else {
			doors.m[d.key] = l
		}
	}
	doors.Unlock()
	if last {
		d.close()
	}
	return nil
}

func (d *door) close() {
	d.mu.Lock()
	d.closed = true
	close(d.done)
	s := d.sess
	d.mu.Unlock()
	if s != nil {
		s.l.sendNow(header{typ: tClose})
		s.end(&Error{Code: Closed, Msg: "Ref closed"})
	}
	d.conn.Close()
}

// Dup returns another Ref to the same object, counted separately: each
// must be closed.
func (r *Ref) Dup() (*Ref, error) {
	if _, err := r.door(); err != nil {
		return nil, err
	}
	doors.Lock()
	r.d.refs++
	doors.Unlock()
	return &Ref{d: r.d}, nil
}

// File returns a new fd of the door, owned by the caller: to pass the
// capability by other means (an inherited fd, another fdpass socket).
func (r *Ref) File() (*os.File, error) {
	f, err := r.door()
	if err != nil {
		return nil, err
	}
	fd, err := fdutil.DupCloexec(f)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "cap-door"), nil
}

// FromFile takes f, an fd of a door received by other means than a call,
// and returns a Ref to it (one more reference when the process holds the
// door already). FromFile takes ownership of f.
func FromFile(f *os.File) (*Ref, error) { return adoptDoor(f) }

// EnvPrefix starts the name of the variable that names an inherited
// capability's fd: PORTER_CAP_<NAME>=<fd>.
const EnvPrefix = "PORTER_CAP_"

func validEnvName(name string) bool {
	if name == "" {
		return false
	}
	for _, c := range []byte(name) {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// ToChild arranges for cmd's process to inherit r as the capability
// name (upper-case letters, digits and _): it appends the door's fd to
// cmd.ExtraFiles and PORTER_CAP_<name>=<fd> to cmd.Env (os.Environ() when
// cmd.Env is nil). r must stay open until cmd.Start returns. (exec puts
// the door's file description in blocking mode; a door is only ever
// written with short OPENs that its server reads at once, so nothing
// waits on it.)
func ToChild(cmd *exec.Cmd, name string, r *Ref) error {
	if !validEnvName(name) {
		return fmt.Errorf("cap: ToChild: bad capability name %q (A-Z, 0-9, _)", name)
	}
	f, err := r.door()
	if err != nil {
		return err
	}
	cmd.ExtraFiles = append(cmd.ExtraFiles, f)
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env, EnvPrefix+name+"="+strconv.Itoa(2+len(cmd.ExtraFiles)))
	return nil
}

// Inherit returns the capability name that this process's parent passed
// it (PORTER_CAP_<name>, see ToChild), marks its fd close-on-exec and
// unsets the variable, so that it is not passed on by accident.
func Inherit(name string) (*Ref, error) {
	if !validEnvName(name) {
		return nil, fmt.Errorf("cap: Inherit: bad capability name %q (A-Z, 0-9, _)", name)
	}
	v, ok := os.LookupEnv(EnvPrefix + name)
	if !ok {
		return nil, fmt.Errorf("cap: Inherit: %s%s is not set", EnvPrefix, name)
	}
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("cap: Inherit: %s%s=%q is not an fd number above 2", EnvPrefix, name, v)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		return nil, fmt.Errorf("cap: Inherit: %s%s=%d: %w", EnvPrefix, name, fd, os.NewSyscallError("fcntl", err))
	}
	os.Unsetenv(EnvPrefix + name)
	r, err := adoptDoor(os.NewFile(uintptr(fd), "cap-door"))
	if err != nil {
		return nil, fmt.Errorf("cap: Inherit %s: %w", name, err)
	}
	return r, nil
}

// session is this process's session with one object.
type session struct {
	d      *door
	l      *link
	cookie uint64
	nextID atomic.Uint64

	mu      sync.Mutex
	pending map[uint64]chan answer
	dead    chan struct{} // closed when the session ended; err says why
	err     error
	opened  chan struct{} // closed when OPENED came
}

type answer struct {
	h    header
	body []byte    // ERROR's text
	val  *received // REPLY's value
}

// end ends the session with err (once) and closes its socket.
func (s *session) end(err error) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	s.err = err
	close(s.dead)
	s.mu.Unlock()
	s.l.close()
}

// reader reads the session's frames: OPENED first, then answers, which it
// hands to their callers; REVOKED or end of file end the session.
func (s *session) reader() {
	f, err := s.l.read()
	if err != nil || f.typ != tOpened {
		f.closeFiles()
		// Died before OPENED: the opener retries while the door takes OPENs.
		s.end(&Error{Code: Gone, Msg: "session ended before OPENED", Err: err})
		return
	}
	s.cookie = binary.LittleEndian.Uint64(f.body)
	close(s.opened)
	for {
		f, err := s.l.read()
		if err != nil {
			var fl *fdLimitError
			if errors.As(err, &fl) && (fl.h.typ == tReply) && fl.h.nfds <= fdsPerPacket {
				s.deliver(answer{h: header{typ: tError, id: fl.h.id, code: uint32(FDLimit)}, body: []byte("no room for the result's fds")})
				continue
			}
			switch {
			case err == io.EOF:
				s.end(&Error{Code: ServerGone, Msg: "the server closed the session"})
			case errors.Is(err, errMalformed):
				s.end(&Error{Code: Protocol, Msg: "malformed frame from the server", Err: err})
			default:
				s.end(&Error{Code: ServerGone, Err: err})
			}
			return
		}
		switch f.typ {
		case tReply, tError:
			a := answer{h: f.header}
			if f.typ == tReply {
				a.val = receive(append([]byte(nil), f.body...), f.files)
			} else {
				a.body = append([]byte(nil), f.body...)
				f.closeFiles()
			}
			s.deliver(a)
		case tRevoked:
			s.d.mu.Lock()
			s.d.revoked = true
			s.d.mu.Unlock()
			s.end(&Error{Code: Revoked, Msg: "the object was revoked"})
			return
		default:
			f.closeFiles()
			s.end(&Error{Code: Protocol, Msg: typeNames[f.typ] + " from the server"})
			return
		}
	}
}

func (s *session) deliver(a answer) {
	s.mu.Lock()
	ch, ok := s.pending[a.h.id]
	delete(s.pending, a.h.id)
	s.mu.Unlock()
	if !ok {
		if a.val != nil { // canceled: drop
			a.val.close()
		}
		return
	}
	ch <- a
}

// session returns the door's session, opening one if there is none.
func (d *door) session(ctx context.Context) (*session, error) {
	for {
		d.mu.Lock()
		if d.closed {
			d.mu.Unlock()
			return nil, &Error{Code: Closed, Msg: "Ref used after Close"}
		}
		if d.revoked {
			d.mu.Unlock()
			return nil, &Error{Code: Revoked, Msg: "the object was revoked"}
		}
		if s := d.sess; s != nil {
			select {
			case <-s.dead:
			default:
				d.mu.Unlock()
				return s, nil
			}
		}
		if ch := d.opening; ch != nil {
			d.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, &Error{Code: Timeout, Err: ctx.Err()}
			}
		}
		ch := make(chan struct{})
		d.opening = ch
		d.mu.Unlock()
		s, err := d.open(ctx)
		d.mu.Lock()
		d.opening = nil
		if err == nil {
			if d.closed {
				s.end(&Error{Code: Closed})
				err = &Error{Code: Closed, Msg: "Ref used after Close"}
			} else {
				d.sess = s
			}
		}
		close(ch)
		d.mu.Unlock()
		return s, err
	}
}

// open opens a session through the door, retrying one that dies before
// OPENED while the door still takes OPENs.
func (d *door) open(ctx context.Context) (*session, error) {
	pause := time.Millisecond
	for {
		a, b, err := fdpass.Socketpair(unix.SOCK_SEQPACKET)
		if err != nil {
			if errors.Is(err, fdpass.ErrFDLimit) {
				return nil, &Error{Code: FDLimit, Msg: "no fds for a session", Err: err}
			}
			return nil, &Error{Code: Internal, Err: err}
		}
		pkt := appendFrame(nil, header{typ: tOpen, nfds: 1}, "", nil)
		err = retryRefs(ctx, func() error {
			_, err := d.conn.Send(pkt, b.Socket().(*os.File))
			return err
		})
		b.Close()
		if err != nil {
			a.Close()
			if errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.ECONNRESET) {
				return nil, &Error{Code: Gone, Msg: "the door refuses: the object is revoked or its server gone", Err: err}
			}
			if errors.Is(err, os.ErrClosed) {
				return nil, &Error{Code: Closed, Msg: "Ref used after Close"}
			}
			if _, ok := err.(*Error); ok {
				return nil, err
			}
			return nil, &Error{Code: Internal, Err: err}
		}
		s := &session{d: d, l: newLink(a), pending: map[uint64]chan answer{}, dead: make(chan struct{}), opened: make(chan struct{})}
		go s.reader()
		select {
		case <-s.opened:
			return s, nil
		case <-s.dead:
		case <-d.done:
			s.end(&Error{Code: Closed})
			return nil, &Error{Code: Closed, Msg: "Ref used after Close"}
		case <-ctx.Done():
			s.end(&Error{Code: Timeout})
			return nil, &Error{Code: Timeout, Msg: "opening a session", Err: ctx.Err()}
		}
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-d.done:
			t.Stop()
			return nil, &Error{Code: Closed, Msg: "Ref used after Close"}
		case <-ctx.Done():
			t.Stop()
			return nil, &Error{Code: Timeout, Msg: "opening a session", Err: ctx.Err()}
		}
		pause = min(2*pause, 100*time.Millisecond)
	}
}

// Call calls method on the object with args and decodes the answer into
// result (a non-nil pointer, or nil to drop it). args is borrowed: Refs
// and files in it stay the caller's. Refs and files in the result are
// the caller's to Close. A ctx that ends first sends CANCEL and makes
// the error Timeout. Errors are *Error: errors.Is(err, cap.ErrRevoked)
// and the like tell them apart.
func (r *Ref) Call(ctx context.Context, method string, args any, result any) error {
	if _, err := r.door(); err != nil {
		return withMethod(err, method)
	}
	if !validName(method) {
		return &Error{Code: UnknownMethod, Method: method, Msg: "not a method name ([A-Za-z_][A-Za-z0-9_]*, 1-255 bytes)"}
	}
	body, files, _, err := encodeValue(args)
	if err != nil {
		if errors.Is(err, errTooManyFDs) {
			return &Error{Code: TooLarge, Method: method, Err: err}
		}
		return &Error{Code: BadArgs, Method: method, Err: err}
	}
	s, err := r.d.session(ctx)
	if err != nil {
		return withMethod(err, method)
	}
	id := s.nextID.Add(1)
	ch := make(chan answer, 1)
	s.mu.Lock()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		return withMethod(err, method)
	}
	s.pending[id] = ch
	s.mu.Unlock()
	if err := s.l.write(ctx, header{typ: tCall, id: id}, method, body, files); err != nil {
		if errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNRESET) {
			// The server closed the session: its reader is about to
			// learn why (REVOKED, or end of file).
			select {
			case <-s.dead:
			case <-ctx.Done():
			}
		}
		s.mu.Lock()
		delete(s.pending, id)
		serr := s.err
		s.mu.Unlock()
		var ce *Error
		switch {
		case errors.As(err, &ce):
		case errors.Is(err, os.ErrDeadlineExceeded):
			err = &Error{Code: Timeout, Msg: "the server does not read", Err: ctx.Err()}
		case serr != nil:
			err = serr
		default:
			err = &Error{Code: ServerGone, Err: err}
		}
		return withMethod(err, method)
	}
	var a answer
	select {
	case a = <-ch:
	case <-s.dead:
		select {
		case a = <-ch:
		default:
			s.mu.Lock()
			delete(s.pending, id)
			err := s.err
			s.mu.Unlock()
			return withMethod(err, method)
		}
	case <-ctx.Done():
		s.mu.Lock()
		_, waiting := s.pending[id]
		delete(s.pending, id)
		s.mu.Unlock()
		if !waiting { // the answer came meanwhile: use it
			a = <-ch
			break
		}
		s.l.sendNow(header{typ: tCancel, id: id})
		return &Error{Code: Timeout, Method: method, Err: ctx.Err()}
	}
	if a.h.typ == tError {
		e := &Error{Code: Code(a.h.code), Method: method, Msg: string(a.body)}
		if e.Code == FDLimit {
			e.Err = unix.EMFILE
		}
		return e
	}
	if err := a.val.decode(result); err != nil {
		return &Error{Code: BadArgs, Method: method, Msg: "the result does not decode", Err: err}
	}
	return nil
}

func withMethod(err error, method string) error {
	if e, ok := err.(*Error); ok {
		c := *e
		c.Method = method
		return &c
	}
	return err
}

// Cookie opens a session if there is none and returns the object's
// cookie: a number its server gave it, random and fixed for its life,
// to check out of band which object a door leads to. It grants nothing.
func (r *Ref) Cookie(ctx context.Context) (uint64, error) {
	if _, err := r.door(); err != nil {
		return 0, err
	}
	s, err := r.d.session(ctx)
	if err != nil {
		return 0, err
	}
	return s.cookie, nil
}

// Done returns a channel closed when the object becomes unreachable (its
// server revoked it, died or closed it) or the Ref's door is closed; Err
// then says which. The first call opens a session to watch, if there is
// none. Every Ref to the same object in a process shares one notice.
func (r *Ref) Done() <-chan struct{} {
	d := r.d
	d.watchOnce.Do(func() {
		d.watchDone = make(chan struct{})
		go d.watch()
	})
	return d.watchDone
}

// Err returns nil until Done is closed, then why: ErrRevoked,
// ErrServerGone, ErrGone or ErrClosed.
func (r *Ref) Err() error {
	select {
	case <-r.Done():
		return r.d.watchErr
	default:
		return nil
	}
}

func (d *door) watch() {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-d.done:
		case <-d.watchDone:
		}
		cancel()
	}()
	// A session that has ended already tells why.
	d.mu.Lock()
	last := d.sess
	d.mu.Unlock()
	if last != nil {
		select {
		case <-last.dead:
			last.mu.Lock()
			d.watchErr = last.err
			last.mu.Unlock()
			close(d.watchDone)
			return
		default:
		}
	}
	for {
		s, err := d.session(ctx)
		if err != nil {
			if errors.Is(err, ErrTimeout) {
				err = &Error{Code: Closed, Msg: "Ref closed"}
			}
			d.watchErr = err
			close(d.watchDone)
			return
		}
		<-s.dead
		s.mu.Lock()
		err = s.err
		s.mu.Unlock()
		d.watchErr = err
		close(d.watchDone)
		return
	}
}
