package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/porter-ipc/porter/internal/fdutil"
	"golang.org/x/sys/unix"
)

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
	linger   timer
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
	timer         timer
}

// mode is a reference's share mode and application name.
type mode struct {
	share Share
	app   string
}

// grantLocked adds a reference to e under tok if the request may share
// it, and returns the answer: a GRANT (with a copy of e's socket unless
// deferred, which the caller closes once sent) or
// an ERROR. s.mu is held; the caller unlocks it.
func (s *Server) grantLocked(c *conn, log *slog.Logger, e *entry, r *Request, tok Token) ([]byte, *os.File) {
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
	var f *os.File
	if !r.Defer {
		var err error
		if f, err = e.dup(); err != nil {
			return dupFailed(log, e, err), nil
		}
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
	u := s.usageOf(c.cred.UID)
	u.refs++
	g := encodeGrant(&grant{Token: tok, Proto: e.key.proto, Addr: e.key.addr})
	if r.Defer {
		u.pending++
		rf.expires = s.clock.Now().Add(s.cfg.TokenTTL)
		rf.timer = s.clock.AfterFunc(s.cfg.TokenTTL, func() { s.expire(rf) })
		log.Debug("deferred token granted", "socket", e.key.String(), "token", tok.Short())
		return g, nil
	}
	rf.c = c
	c.refs[rf] = struct{}{}
	log.Debug("socket granted", "socket", e.key.String(), "token", tok.Short(), "refs", len(e.refs))
	return g, f
}

// dup returns a copy of e's socket for one answer, made under s.mu and
// owned by the caller, who closes it once sent: a release by another
// connection may close e.file meanwhile, and the answer must still carry
// the socket.
func (e *entry) dup() (*os.File, error) {
	fd, err := fdutil.DupCloexec(e.file)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), e.file.Name()), nil
}

// dupFailed is the answer when the copy of a socket for the client could
// not be made (the broker is out of fds): nothing changed, retry later.
func dupFailed(log *slog.Logger, e *entry, err error) []byte {
	errno := unix.EMFILE
	errors.As(err, &errno)
	log.Warn("could not copy a socket for the answer", "socket", e.key.String(), "err", err)
	return encodeError(CodeInternal, errno, fmt.Sprintf("%s: the broker is out of file descriptors (%s) and could not copy the socket for its answer; nothing changed, retry later", e.key, unix.ErrnoName(errno)))
}

// describeHolders lists e's references (at most 8) for a CONFLICT's text.
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
	if rf == nil || rf.c != nil || s.clock.Now().After(rf.expires) {
		log.Info("pickup refused", "token", tok.Short())
		return encodeError(CodeNoToken, defaultErrno(CodeNoToken), "token "+tok.Short()+" is unknown, expired, or already picked up"), nil
	}
	if rf.uid != c.cred.UID {
		if code, text := s.overQuotaLocked(c.cred.UID, false); code != 0 {
			return encodeError(code, defaultErrno(code), text), nil
		}
	}
	f, err := rf.e.dup()
	if err != nil {
		return dupFailed(log, rf.e, err), nil
	}
	rf.timer.Stop()
	u := s.usage[rf.uid]
	u.pending--
	u.refs--
	s.forgetIfIdle(rf.uid)
	s.usageOf(c.cred.UID).refs++
	rf.pid, rf.uid, rf.gid, rf.c = c.cred.PID, c.cred.UID, c.cred.GID, c
	rf.expires, rf.timer = time.Time{}, nil
	c.refs[rf] = struct{}{}
	log.Debug("token picked up", "socket", rf.e.key.String(), "token", tok.Short())
	return encodeGrant(&grant{Token: tok, Proto: rf.e.key.proto, Addr: rf.e.key.addr}), f
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
	if err := fdutil.Control(f, func(fd int) error { return unix.Fstat(fd, &st) }); err != nil {
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
	s.forgetIfIdle(rf.uid)
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
		e.until = s.clock.Now().Add(s.cfg.Linger)
		e.linger = s.clock.AfterFunc(s.cfg.Linger, func() { s.endLinger(e) })
		s.log.Info("last reference gone; lingering", "socket", e.key.String(), "linger", s.cfg.Linger)
		return
	}
	s.closeEntryLocked(e)
}

// endLinger closes e when its linger is over and nobody took it up again.
func (s *Server) endLinger(e *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(e.refs) > 0 || e.closed || e.until.IsZero() || s.clock.Now().Before(e.until) {
		return
	}
	s.closeEntryLocked(e)
}

// closeEntryLocked takes e out of the cache and closes the broker's copy
// of its socket. s.mu is held.
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

func (k key) String() string { return k.proto.String() + "://" + k.addr.String() }
