// Package fdpass passes file descriptors and credentials over Unix sockets.
//
// It is the only package in porter that builds or parses socket control
// messages (SCM_RIGHTS, SCM_CREDENTIALS) or reads SO_PEERCRED. It works on
// SOCK_STREAM, SOCK_SEQPACKET and SOCK_DGRAM sockets, on a *net.UnixConn or
// an *os.File alike, and waits in Go's netpoller rather than blocking a
// thread whenever the socket is non-blocking.
//
// Ownership: sending borrows (the caller keeps and closes what it sent);
// receiving gives (every fd in a returned Msg belongs to the caller, is
// close-on-exec, and is already closed when an error is returned). A
// function that takes ownership of its argument (NewConn) has it from
// the call on, whatever the outcome: when it fails, it has closed the
// argument, and the caller must not close it again.
//
// Limits: the kernel carries at most MaxFDsPerMessage fds in one message.
// Send splits larger sets over several messages on stream sockets (and
// RecvFull joins them again) and refuses them on packet sockets.
package fdpass

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/porter-ipc/porter/internal/fdutil"
	"golang.org/x/sys/unix"
)

// MaxFDsPerMessage is the kernel's limit on fds in one message (SCM_MAX_FD).
const MaxFDsPerMessage = 253

// Cred is a process's credentials as the kernel reports them.
type Cred struct {
	PID int // process id
	UID int // user id
	GID int // group id
}

// Msg is one received message. Its Files belong to the receiver.
type Msg struct {
	N     int        // bytes of data read into the buffer
	Files []*os.File // fds that came with the data, close-on-exec
	Cred  *Cred      // the sender's credentials, when SO_PASSCRED is on
}

// Close closes every file in m and forgets them.
func (m *Msg) Close() error {
	var first error
	for _, f := range m.Files {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	m.Files = nil
	return first
}

// Socket is what a Conn can wrap: *net.UnixConn and *os.File both are.
type Socket interface {
	syscall.Conn
	io.Closer
}

// Conn is a Unix socket that sends and receives fds and credentials.
// Its methods are safe for concurrent use; each Send and each Recv is
// atomic with respect to the others on the same Conn, and so is each
// RecvFull of a message Send split.
type Conn struct {
	s    Socket
	rc   syscall.RawConn
	typ  int // SOCK_STREAM, SOCK_SEQPACKET or SOCK_DGRAM
	addr string
	// rmu makes each Recv and RecvFull whole: RecvFull's parts are not
	// interleaved with another reader's.
	rmu sync.Mutex
	// passCred mirrors SO_PASSCRED, so that Recv leaves room for the
	// credentials only when they come, and no room for surplus fds.
	passCred atomic.Bool
}

// NewConn wraps s, which must be an AF_UNIX socket. NewConn takes ownership
// of s: Close closes it, and when NewConn fails it has closed s. The
// caller may go on using s for deadlines and addresses but must not close
// it.
func NewConn(s Socket) (*Conn, error) {
	c, err := newConn(s)
	if err != nil {
		s.Close()
		return nil, err
	}
	return c, nil
}

func newConn(s Socket) (*Conn, error) {
	rc, err := s.SyscallConn()
	if err != nil {
		return nil, &OpError{Op: "fdpass", Err: err}
	}
	c := &Conn{s: s, rc: rc, addr: addrOf(s)}
	var domain, pass int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		domain, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
		if serr == nil && domain != unix.AF_UNIX {
			serr = unix.EAFNOSUPPORT
		}
		if serr == nil {
			c.typ, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
		}
		if serr == nil {
			pass, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED)
		}
	}); err != nil {
		return nil, &OpError{Op: "getsockopt", Addr: c.addr, Err: err}
	}
	if serr == unix.EAFNOSUPPORT {
		return nil, &OpError{Op: "fdpass", Addr: c.addr, Err: fmt.Errorf("not a Unix socket: %w", serr)}
	}
	if serr != nil {
		return nil, &OpError{Op: "getsockopt", Addr: c.addr, Err: serr}
	}
	c.passCred.Store(pass != 0)
	return c, nil
}

// NewAcceptedConn wraps s, a socket that accept(2) returned on an
// AF_UNIX listener of type typ (unix.SOCK_STREAM or unix.SOCK_SEQPACKET),
// without asking the kernel what NewConn asks (the domain, the type and
// SO_PASSCRED: three getsockopt calls per connection). An accepted socket
// has its listener's type, and inherits its SO_PASSCRED, which the caller
// states as passCred. For servers that accept connections at a high
// rate. It takes ownership of s as NewConn does.
func NewAcceptedConn(s Socket, typ int, passCred bool) (*Conn, error) {
	if typ != unix.SOCK_STREAM && typ != unix.SOCK_SEQPACKET {
		s.Close()
		return nil, &OpError{Op: "fdpass", Addr: addrOf(s), Err: fmt.Errorf("socket type %d does not accept: %w", typ, unix.EINVAL)}
	}
	rc, err := s.SyscallConn()
	if err != nil {
		s.Close()
		return nil, &OpError{Op: "fdpass", Err: err}
	}
	c := &Conn{s: s, rc: rc, typ: typ, addr: addrOf(s)}
	c.passCred.Store(passCred)
	return c, nil
}

// Socketpair returns two connected Conns of the given type (unix.SOCK_STREAM,
// unix.SOCK_SEQPACKET or unix.SOCK_DGRAM), non-blocking and close-on-exec.
func Socketpair(typ int) (*Conn, *Conn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, &OpError{Op: "socketpair", Err: err}
	}
	fa, fb := os.NewFile(uintptr(fds[0]), "socketpair"), os.NewFile(uintptr(fds[1]), "socketpair")
	a, err := NewConn(fa)
	if err != nil {
		fb.Close()
		return nil, nil, err
	}
	b, err := NewConn(fb)
	if err != nil {
		a.Close()
		return nil, nil, err
	}
	return a, b, nil
}

// Type returns the socket type: unix.SOCK_STREAM, SOCK_SEQPACKET or SOCK_DGRAM.
func (c *Conn) Type() int { return c.typ }

// Socket returns the wrapped socket, still owned by c.
func (c *Conn) Socket() Socket { return c.s }

// Close closes the socket.
func (c *Conn) Close() error { return c.s.Close() }

// SetDeadline sets the read and write deadlines, if the socket supports them.
func (c *Conn) SetDeadline(t time.Time) error {
	if d, ok := c.s.(interface{ SetDeadline(time.Time) error }); ok {
		return d.SetDeadline(t)
	}
	return os.ErrNoDeadline
}

// Send writes b and the fds of files as one message. It borrows files: the
// caller still owns them and must not close them before Send returns.
//
// On packet sockets at most MaxFDsPerMessage fds fit in one message. On
// stream sockets a larger set is split: the first part of b travels with
// the first MaxFDsPerMessage fds and each further group of fds with one
// more byte of b, so b must be long enough; RecvFull joins them again.
// Fds need at least one byte of data. Send returns the bytes of b written.
func (c *Conn) Send(b []byte, files ...*os.File) (int, error) {
	return c.send(b, nil, files)
}

// SendCred is Send with an SCM_CREDENTIALS message. A nil cred sends the
// caller's own (pid, uid, gid); the kernel refuses credentials that the
// caller may not claim (EPERM). The receiver needs SO_PASSCRED
// (SetPassCred) to see them.
func (c *Conn) SendCred(b []byte, cred *Cred, files ...*os.File) (int, error) {
	if cred == nil {
		cred = &Cred{PID: os.Getpid(), UID: os.Getuid(), GID: os.Getgid()}
	}
	return c.send(b, cred, files)
}

func (c *Conn) send(b []byte, cred *Cred, files []*os.File) (int, error) {
	var n int
	var serr error
	err := holdFDs(files, make([]int, 0, len(files)), func(fds []int) error {
		n, serr = c.sendFDs(b, cred, fds)
		return nil
	})
	if err != nil {
		return 0, &OpError{Op: "sendmsg", Addr: c.addr, Err: err}
	}
	return n, serr
}

// holdFDs calls fn with the descriptor numbers of files, each held through
// its Control until fn returns: a Close of one of them meanwhile (by
// another goroutine) waits, so its number cannot be reused for something
// else under the sendmsg. Control, not f.Fd(): Fd switches the file
// description to blocking mode, which every holder of it would then see.
func holdFDs(files []*os.File, fds []int, fn func(fds []int) error) error {
	if len(files) == 0 {
		return fn(fds)
	}
	return fdutil.Control(files[0], func(fd int) error {
		return holdFDs(files[1:], append(fds, fd), fn)
	})
}

// sendFDs is send with the fds' numbers, held open by the caller.
func (c *Conn) sendFDs(b []byte, cred *Cred, fds []int) (int, error) {
	if len(fds) > 0 && len(b) == 0 {
		return 0, &OpError{Op: "sendmsg", Addr: c.addr, Kind: ErrNeedData}
	}
	groups := (len(fds) + MaxFDsPerMessage - 1) / MaxFDsPerMessage
	if groups > 1 && c.typ != unix.SOCK_STREAM {
		return 0, &OpError{Op: "sendmsg", Addr: c.addr, Kind: ErrTooManyFDs}
	}
	if groups > len(b) {
		return 0, &OpError{Op: "sendmsg", Addr: c.addr, Kind: ErrNeedData}
	}

	// Parts: part 0 is b[:len(b)-(groups-1)] with the first group of fds
	// (and the credentials); part i>0 is one byte with group i.
	type part struct {
		data []byte
		oob  []byte
	}
	var parts []part
	first := len(b)
	if groups > 1 {
		first = len(b) - (groups - 1)
	}
	for i := 0; i == 0 || i < groups; i++ {
		var p part
		if i == 0 {
			p.data = b[:first]
			if cred != nil {
				p.oob = unix.UnixCredentials(&unix.Ucred{Pid: int32(cred.PID), Uid: uint32(cred.UID), Gid: uint32(cred.GID)})
			}
		} else {
			p.data = b[first+i-1 : first+i]
		}
		if lo := i * MaxFDsPerMessage; lo < len(fds) {
			p.oob = append(p.oob, unix.UnixRights(fds[lo:min(lo+MaxFDsPerMessage, len(fds))]...)...)
		}
		parts = append(parts, p)
	}

	// One RawConn.Write for all parts keeps them together under the
	// socket's write lock. The closure keeps its progress across the
	// netpoller's wake-ups.
	written, idx, off := 0, 0, 0
	var serr error
	wouldBlock := false
	err := c.rc.Write(func(fd uintptr) bool {
		for idx < len(parts) {
			p := parts[idx]
			var oob []byte
			if off == 0 {
				oob = p.oob // control data goes with the first byte only
			}
			n, err := unix.SendmsgN(int(fd), p.data[off:], oob, nil, unix.MSG_NOSIGNAL)
			if err == unix.EINTR {
				continue
			}
			if err == unix.EAGAIN {
				wouldBlock = true
				return false
			}
			wouldBlock = false
			if err != nil {
				serr = err
				return true
			}
			written += n
			off += n
			if c.typ != unix.SOCK_STREAM || off >= len(p.data) {
				idx, off = idx+1, 0
			}
		}
		return true
	})
	if serr != nil {
		return written, &OpError{Op: "sendmsg", Addr: c.addr, Kind: kindOf(serr), Err: serr}
	}
	if err != nil {
		if notPollable(err, wouldBlock) {
			return written, &OpError{Op: "sendmsg", Addr: c.addr, Kind: ErrWouldBlock, Err: unix.EAGAIN}
		}
		return written, &OpError{Op: "sendmsg", Addr: c.addr, Err: err}
	}
	return written, nil
}

// Recv reads one message into b, accepting at most maxFDs fds with it. On
// a stream socket it returns what one recvmsg gives, which may be less
// than the sender wrote (see RecvFull). At end of stream (or an empty
// message on a SOCK_SEQPACKET socket) it returns io.EOF.
//
// On any error every fd that arrived is closed. A message with more fds
// than maxFDs, or more data than len(b) on a packet socket, is consumed and
// fails with ErrTruncated; fds the process had no room for fail with
// ErrFDLimit. After either the stream's framing is lost: close it.
func (c *Conn) Recv(b []byte, maxFDs int) (Msg, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	return c.recv(b, maxFDs)
}

func (c *Conn) recv(b []byte, maxFDs int) (Msg, error) {
	if maxFDs < 0 {
		maxFDs = 0
	}
	credSpace := 0
	if c.passCred.Load() {
		credSpace = unix.CmsgSpace(unix.SizeofUcred)
	}
	oob := make([]byte, credSpace+unix.CmsgSpace(4*maxFDs))
	var n, oobn, flags int
	var rerr error
	wouldBlock := false
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			n, oobn, flags, _, rerr = unix.Recvmsg(int(fd), b, oob, unix.MSG_CMSG_CLOEXEC)
			if rerr != unix.EINTR {
				break
			}
		}
		wouldBlock = rerr == unix.EAGAIN
		return !wouldBlock
	})
	if err == nil {
		err = rerr
	}
	if err != nil && notPollable(err, wouldBlock) {
		// The netpoller cannot wait on this fd; say EAGAIN, not its excuse.
		return Msg{}, &OpError{Op: "recvmsg", Addr: c.addr, Kind: ErrWouldBlock, Err: unix.EAGAIN}
	}
	if err != nil {
		return Msg{}, &OpError{Op: "recvmsg", Addr: c.addr, Kind: kindOf(err), Err: err}
	}

	m := Msg{N: n}
	fds, cred := parseControl(oob[:oobn])
	for _, fd := range fds {
		m.Files = append(m.Files, os.NewFile(uintptr(fd), "fdpass"))
	}
	m.Cred = cred

	fail := func(kind, cause error) (Msg, error) {
		m.Close()
		return Msg{}, &OpError{Op: "recvmsg", Addr: c.addr, Kind: kind, Err: cause}
	}
	if flags&unix.MSG_CTRUNC != 0 {
		// The kernel installs fds until the buffer is full or it cannot
		// install one more (EMFILE, ENFILE), then sets MSG_CTRUNC and
		// drops the rest. Tell the two apart by the room that was left.
		used := unix.SizeofCmsghdr
		if cred != nil {
			used += unix.CmsgSpace(unix.SizeofUcred)
		}
		if room := (len(oob) - used) / 4; len(fds) < room {
			return fail(ErrFDLimit, fdShortage())
		}
		return fail(ErrTruncated, nil)
	}
	if len(fds) > maxFDs {
		// The cmsg padding can fit one fd more than asked for.
		return fail(ErrTruncated, nil)
	}
	if flags&unix.MSG_TRUNC != 0 {
		return fail(ErrTruncated, nil)
	}
	if n == 0 && len(fds) == 0 && c.typ != unix.SOCK_DGRAM && len(b) > 0 {
		return Msg{}, io.EOF
	}
	return m, nil
}

// RecvFull reads exactly len(b) bytes and the fds that come with them, up
// to maxFDs in all. On a stream socket it joins the parts Send made of a
// large message; on a packet socket it reads one message, and one shorter
// than b fails. End of stream before the first byte returns io.EOF, after
// it io.ErrUnexpectedEOF; on any error every fd received is closed.
func (c *Conn) RecvFull(b []byte, maxFDs int) (Msg, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	var all Msg
	for all.N < len(b) || len(b) == 0 {
		m, err := c.recv(b[all.N:], maxFDs-len(all.Files))
		if err == io.EOF && (all.N > 0 || len(all.Files) > 0) {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			all.Close()
			return Msg{}, err
		}
		all.N += m.N
		all.Files = append(all.Files, m.Files...)
		if m.Cred != nil && all.Cred == nil {
			all.Cred = m.Cred
		}
		if c.typ != unix.SOCK_STREAM || len(b) == 0 {
			break
		}
	}
	if all.N < len(b) {
		all.Close()
		return Msg{}, &OpError{Op: "recvmsg", Addr: c.addr, Err: io.ErrUnexpectedEOF}
	}
	return all, nil
}

// SetPassCred turns SO_PASSCRED on or off: when on, every received message
// carries the sender's credentials (Msg.Cred), checked by the kernel.
func (c *Conn) SetPassCred(on bool) error {
	v := 0
	if on {
		v = 1
	}
	var serr error
	if err := c.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, v)
	}); err != nil {
		serr = err
	}
	if serr != nil {
		return &OpError{Op: "setsockopt SO_PASSCRED", Addr: c.addr, Err: serr}
	}
	c.passCred.Store(on)
	return nil
}

// PeerCred returns the credentials of the peer as they were when it called
// connect(2) or socketpair(2) (SO_PEERCRED).
func (c *Conn) PeerCred() (Cred, error) {
	return PeerCred(c.s)
}

// PeerCred returns the SO_PEERCRED credentials of a connected Unix socket,
// such as a *net.UnixConn from Accept, without wrapping it.
func PeerCred(s syscall.Conn) (Cred, error) {
	var uc *unix.Ucred
	err := fdutil.Control(s, func(fd int) (err error) {
		uc, err = unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
		return err
	})
	if err != nil {
		return Cred{}, &OpError{Op: "getsockopt SO_PEERCRED", Addr: addrOf(s), Err: err}
	}
	return Cred{PID: int(uc.Pid), UID: int(uc.Uid), GID: int(uc.Gid)}, nil
}

// parseControl walks the control messages one by one, so that a malformed
// or truncated one at the end cannot hide the fds before it, and checks
// each length before decoding (unix.ParseUnixCredentials panics on a short
// one).
func parseControl(oob []byte) (fds []int, cred *Cred) {
	for len(oob) >= unix.SizeofCmsghdr {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			break
		}
		oob = rest
		if h.Level != unix.SOL_SOCKET {
			continue
		}
		switch h.Type {
		case unix.SCM_RIGHTS:
			for len(data) >= 4 {
				fds = append(fds, int(int32(binary.NativeEndian.Uint32(data))))
				data = data[4:]
			}
		case unix.SCM_CREDENTIALS:
			if len(data) >= unix.SizeofUcred {
				m := unix.SocketControlMessage{Header: h, Data: data}
				if uc, err := unix.ParseUnixCredentials(&m); err == nil {
					cred = &Cred{PID: int(uc.Pid), UID: int(uc.Uid), GID: int(uc.Gid)}
				}
			}
		}
	}
	return fds, cred
}

// notPollable reports whether RawConn.Read or Write gave up with err after
// the callback saw EAGAIN because the netpoller cannot wait on the fd,
// rather than because of a deadline or a close.
func notPollable(err error, sawEAGAIN bool) bool {
	return sawEAGAIN && !errors.Is(err, os.ErrDeadlineExceeded) &&
		!errors.Is(err, os.ErrClosed) && !errors.Is(err, net.ErrClosed)
}

// fdShortage says which limit stopped the kernel installing a received fd,
// EMFILE (this process) or ENFILE (the system), by trying to make one
// more fd while the ones that did arrive are still open. Nil when the
// shortage has already passed.
func fdShortage() error {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err == nil {
		unix.Close(fd)
		return nil
	}
	return err
}

// addrOf names a socket for error messages.
func addrOf(s any) string {
	if uc, ok := s.(*net.UnixConn); ok {
		if a := uc.LocalAddr(); a != nil && a.String() != "" {
			return a.String()
		}
		if a := uc.RemoteAddr(); a != nil {
			return a.String()
		}
	}
	if f, ok := s.(*os.File); ok {
		return f.Name()
	}
	return ""
}
