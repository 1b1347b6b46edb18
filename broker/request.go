package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"unicode/utf8"

	"github.com/porter-ipc/porter/fdpass"
	"github.com/porter-ipc/porter/internal/fdutil"
	"golang.org/x/sys/unix"
)

// Request asks the broker for a socket.
type Request struct {
	Proto Proto
	Addr  netip.AddrPort // port 0: a new socket on a free port (cached under the port it got, which later requests may then share)
	Share Share
	App   string // application name, at most MaxApp bytes
	Defer bool   // answer with a token only; pick the fd up later with Pickup
}

// validName checks an application name: valid UTF-8 without control
// characters (C0, DEL and C1: U+0000–U+001F, U+007F–U+009F), at most
// MaxApp bytes.
func validName(s string) error {
	if len(s) > MaxApp {
		return fmt.Errorf("application name is %d bytes, longer than %d", len(s), MaxApp)
	}
	if !utf8.ValidString(s) {
		return errors.New("application name is not valid UTF-8")
	}
	for _, r := range s {
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return fmt.Errorf("application name contains control character %#x", r)
		}
	}
	return nil
}

// checkRequest validates a request's values (not its structure).
func checkRequest(r *Request) error {
	if r.Proto != TCP && r.Proto != UDP {
		return invalid("protocol %#x is neither 'T' (tcp) nor 'U' (udp)", byte(r.Proto))
	}
	if r.Share > ShareAny {
		return invalid("share mode %d is not 0 (none), 1 (app) or 2 (any)", byte(r.Share))
	}
	if !r.Addr.Addr().IsValid() {
		return invalid("no address")
	}
	if z := r.Addr.Addr().Zone(); z != "" {
		return invalid("address has zone %q; zones are not supported", z)
	}
	a := r.Addr.Addr()
	if a.IsMulticast() {
		return invalid("multicast address %s", a)
	}
	if a.Is4In6() {
		// The creator would bind the IPv4 address: the same socket under a
		// second name, past rules and sharing written for the first.
		return invalid("IPv4-mapped address %s: ask for %s with family 4", a, a.Unmap())
	}
	if err := validName(r.App); err != nil {
		return invalid("%v", err)
	}
	return nil
}

// request answers a REQUEST: a GRANT (with a copy of the socket unless
// deferred, which the caller closes once sent) or an ERROR.
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
	if d := s.cfg.Policy(c.cred, *r); !d.Allow {
		if d.Reason == "" {
			d.Reason = deniedText
		}
		return errorf(CodeDenied, 0, "%s: %s", k, d.Reason)
	}
	tok, err := newToken()
	if err != nil {
		return errorf(CodeInternal, 0, "token: %v", err)
	}

	s.mu.Lock()
	if code, text := s.overQuotaLocked(c.cred.UID, r.Defer); code != 0 {
		s.mu.Unlock()
		return errorf(code, 0, "%s", text)
	}
	if e := s.cache[k]; e != nil && r.Addr.Port() != 0 {
		out, f := s.grantLocked(c, log, e, r, tok)
		s.mu.Unlock()
		return out, f
	}
	s.mu.Unlock()

	// A miss: create it, once, whoever else asks meanwhile.
	s.createMu.Lock()
	defer s.createMu.Unlock()
	s.mu.Lock()
	if e := s.cache[k]; e != nil && r.Addr.Port() != 0 {
		if code, text := s.overQuotaLocked(c.cred.UID, r.Defer); code != 0 {
			s.mu.Unlock()
			return errorf(code, 0, "%s", text)
		}
		out, f := s.grantLocked(c, log, e, r, tok)
		s.mu.Unlock()
		return out, f
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
		e, err := s.newEntry(k, f)
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
		if code, text := s.overQuotaLocked(c.cred.UID, r.Defer); code != 0 {
			s.mu.Unlock()
			e.file.Close()
			return errorf(code, 0, "%s", text)
		}
		s.cache[e.key] = e
		log.Info("socket created", "socket", e.key.String(), "ino", e.ino, "attempts", attempt)
		out, f := s.grantLocked(c, log, e, r, tok)
		if len(e.refs) == 0 { // refused after all (no fd to copy it): nobody holds it
			s.closeEntryLocked(e)
		}
		s.mu.Unlock()
		return out, f
	}
}

// maxPortAttempts bounds the new sockets one port-0 request may try.
const maxPortAttempts = 32

// newEntry makes an entry of a fresh socket: the bound address it really
// has (a port-0 request gets one), its inode, and for TCP listen(2).
func (s *Server) newEntry(k key, f *os.File) (*entry, error) {
	var st unix.Stat_t
	var sa unix.Sockaddr
	var op string
	err := fdutil.Control(f, func(fd int) (err error) {
		if op, err = "fstat", unix.Fstat(fd, &st); err != nil {
			return os.NewSyscallError(op, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			return fmt.Errorf("the creator returned a non-socket: %w", unix.ENOTSOCK)
		}
		op = "getsockname"
		if sa, err = unix.Getsockname(fd); err != nil {
			return os.NewSyscallError(op, err)
		}
		if k.proto == TCP {
			if op, err = "listen", unix.Listen(fd, s.cfg.Backlog); err != nil {
				return os.NewSyscallError(op, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, &net.OpError{Op: op, Net: k.proto.String(), Addr: k.proto.NetAddr(k.addr), Err: err}
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
