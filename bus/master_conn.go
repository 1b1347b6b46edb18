package bus

import (
	"encoding/binary"
	"errors"
	"io"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/porter-ipc/porter/fdpass"
	"github.com/porter-ipc/porter/internal/dbuswire"
)

// masterState is everything the master's loop owns. Only the loop
// goroutine touches it (and Close, once the loop has stopped).
type masterState struct {
	m        *Master
	conns    map[int32]*mconn  // by socket fd
	addrs    map[uint64]*maddr // every live address
	names    map[string]*mname
	chans    map[uint64]*mchan
	slots    map[slotKey]*maddr // routed calls awaiting a reply: (caller, serial) → callee
	watchers matchIndex         // every endpoint's matches
	perUID   map[int]int        // joined endpoints per uid
	users    map[int]*userUse   // what each uid's endpoints hold at the master
	userMax  userUse            // the most one uid may hold (docs/dbus.md, "Accounting")

	endpoints int
	nextAddr  uint64
	nextChan  uint64
	epoch     uint64 // bumps when names move or the policy is revalidated: OpTalk cache

	welcome WelcomeBody // the defaults every WELCOME starts from
	bloom   Bloom
	buf     []byte // one receive buffer: max_frame − MasterRoom bytes

	killing   bool
	toKill    []*mconn
	perUIDMax int

	mon monitorState
	// stalled: endpoints whose queue was found full, since when.
	stalled map[*mconn]time.Time
	// noCopy: a bus signal being published was copied to the monitors
	// once; its copies to each watcher are not.
	noCopy bool

	acceptPaused   bool
	acceptPausedAt time.Time
	acceptWarned   time.Time

	// The D-Bus front (dbus_front.go): one read buffer, the D-Bus message
	// being routed (a FAIL to it is translated against it), and publish's
	// filter for the signals only D-Bus connections get.
	dbuf     []byte
	dbufs    [][]byte // writeDBus's buffers for one sendmsg
	dcur     *dbuswire.Header
	dcurConn *mconn
	dbusOnly bool

	// batching: frames sent while one connection's frames are handled
	// wait in their receivers' queues (listed in dirty) and go out
	// together when readFrom is done, each queue in one sendmmsg.
	// published: the last frame handled was a multicast signal.
	batching, published bool
	dirty               []*mconn
	mmsg                []unix.Mmsghdr
	iov                 []unix.Iovec
}

// maxBurst is how many frames readFrom takes from one connection in one
// turn while they are multicast signals: a publisher's burst then goes to
// each receiver in one sendmmsg, and wakes it once, instead of a syscall
// and a wake-up per frame.
const maxBurst = 32

// mconn is one endpoint's master connection.
type mconn struct {
	fd      int
	c       *fdpass.Conn
	cred    fdpass.Cred
	joined  bool
	hello   uint32 // HELLO flags
	monitor bool   // BECOME_MONITOR succeeded: it only receives
	visit   uint64 // the match index's stamp
	label   string

	primary *maddr
	addrs   []*maddr

	serial uint64 // the master's serials on this connection

	out      []outFrame
	outBytes int
	shares   map[*mconn]*share // each sender's data frames in out
	events   uint32            // registered with epoll
	dirty    bool              // in masterState.dirty
	paused   bool              // not read until its queues drain
	held     int               // frames this endpoint sent that wait in other queues
	heldFDs  int

	matches map[uint64]*AddMatchBody
	mlist   []*AddMatchBody // the same matches, to walk (matchIndex keeps it)
	nchans  int
	pending int // routed calls awaiting a reply, as caller
	nnames  int // names owned or queued for, all addresses

	talk map[talkKey]talkEntry // cached OpTalk decisions toward receivers

	lastSig   Signal     // its last multicast signal's properties
	lastBloom []byte     // and their bloom (bloomOf)
	outBase   []outFrame // out's backing array, reused when out drains

	lost, lostTotal uint64 // multicast copies not queued: since the last Lost, and in all

	dead bool
	// wclosed: a write found the peer gone (EPIPE). What it sent before
	// it went is still read and handled; then it is killed.
	wclosed bool
	gone    uint32 // the EndpointGone reason, once dead
	warned  int    // log lines written about it

	d *dconn // a D-Bus connection (dbus_front.go); nil for a native one
}

type outFrame struct {
	b              []byte
	files          []*os.File
	from           *mconn // the endpoint whose frame this is, nil for the master's own
	data           bool   // a data frame: bounded by the queues
	dbus           bool   // b is D-Bus bytes (to a D-Bus connection), not a frame
	serial, source uint64
}

// userUse is what one user's endpoints hold at the master: bytes and fds
// of their frames waiting in queues, match rules, and reply slots of
// their routed calls.
type userUse struct{ bytes, fds, matches, slots int }

// user is uid's account, made on first use.
func (s *masterState) user(uid int) *userUse {
	u := s.users[uid]
	if u == nil {
		u = &userUse{}
		s.users[uid] = u
	}
	return u
}

// userDone forgets an account that holds nothing.
func (s *masterState) userDone(uid int) {
	if u := s.users[uid]; u != nil && *u == (userUse{}) {
		delete(s.users, uid)
	}
}

// hold counts a frame of o.from's entering a queue (d = 1) or leaving it
// (d = −1), for the sender's pause and its user's account.
func (s *masterState) hold(o outFrame, d int) {
	if o.from == nil {
		return
	}
	o.from.held += d
	o.from.heldFDs += d * len(o.files)
	u := s.user(o.from.cred.UID)
	u.bytes += d * len(o.b)
	u.fds += d * len(o.files)
	s.userDone(o.from.cred.UID)
}

// share is one sender's part of a receiver's queue.
type share struct{ msgs, bytes int }

type talkEntry struct {
	epoch uint64
	d     Decision
}

// maddr is one address of an endpoint.
type maddr struct {
	addr     uint64
	c        *mconn
	owned    []string
	queued   []string
	chans    map[uint64]*mchan
	slotsIn  map[slotKey]struct{} // routed calls to this address awaiting its reply
	slotsOut map[slotKey]struct{} // routed calls from this address awaiting a reply
}

type mname struct {
	name       string
	owner      *maddr
	ownerFlags uint32
	queue      []nameWait
}

type nameWait struct {
	a     *maddr
	flags uint32
}

// mchan is a channel the master introduced; it cannot see the channel
// itself, only remember the pair.
type mchan struct {
	id   uint64
	init *maddr // the initiator's address (who asked)
	acc  *maddr // the acceptor's address
}

type slotKey struct{ caller, serial uint64 }

func (s *masterState) init(m *Master) {
	s.m = m
	s.conns = map[int32]*mconn{}
	s.addrs = map[uint64]*maddr{}
	s.names = map[string]*mname{}
	s.chans = map[uint64]*mchan{}
	s.slots = map[slotKey]*maddr{}
	s.perUID = map[int]int{}
	s.users = map[int]*userUse{}
	s.nextAddr = 2
	s.nextChan = 1
	s.welcome = DefaultWelcome()
	s.welcome.BusID = newBusID()
	s.bloom = DefaultBloom
	s.buf = make([]byte, int(s.welcome.MaxFrame)-MasterRoom)
	s.perUIDMax = 16384
	w := s.welcome
	s.userMax = userUse{bytes: 16 * int(w.QueueBytes), fds: 16 * int(w.FDsInFlight), matches: 16 * int(w.MaxMatches), slots: 16 * int(w.PendingCalls)}
}

func (s *masterState) rules(c *mconn) Rules {
	return Rules{Path: PathToMaster, Joined: c.joined, MaxFrame: int(s.welcome.MaxFrame),
		MaxFDs: int(s.welcome.MaxFDs), BloomSize: int(s.welcome.BloomSize)}
}

// accept takes one pending connection per event on listener lfd: native
// ones, or D-Bus ones (dbus) from the front door. The listener is
// level-triggered, so epoll reports it again while others wait, and
// accepting on to EAGAIN would cost a failing accept4 per join.
// A native connection's SO_PASSCRED (for HELLO's credentials) is
// inherited from the listener (Listen), and its type known, so it costs
// no getsockopt or setsockopt beyond SO_PEERCRED.
func (s *masterState) accept(lfd int, dbus bool) {
	m := s.m
	for {
		fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
		switch err {
		case nil:
		case unix.EAGAIN:
			return
		case unix.EINTR, unix.ECONNABORTED:
			continue
		case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM:
			// Level-triggered: leave the listener out of the set for a
			// moment instead of spinning on it.
			s.acceptPaused, s.acceptPausedAt = true, time.Now()
			m.epollMod(m.lfd, 0)
			if m.dlfd >= 0 {
				m.epollMod(m.dlfd, 0)
			}
			if time.Since(s.acceptWarned) > 10*time.Second {
				s.acceptWarned = time.Now()
				m.logf("bus: accept on %s: %v; pausing new connections", m.path, err)
			}
			return
		default:
			m.logf("bus: accept on %s: %v", m.path, err)
			return
		}
		typ := unix.SOCK_SEQPACKET
		if dbus {
			typ = unix.SOCK_STREAM
		}
		conn, err := fdpass.NewAcceptedConn(rawSock(fd), typ, !dbus)
		if err != nil {
			m.logf("bus: new connection: %v", err)
			return
		}
		cred, err := fdpass.PeerCred(rawSock(fd))
		if err == nil {
			err = m.epollAdd(fd, unix.EPOLLIN)
		}
		if err != nil {
			m.logf("bus: new connection: %v", err)
			conn.Close()
			return
		}
		c := &mconn{fd: fd, c: conn, cred: cred, events: unix.EPOLLIN}
		if dbus {
			c.d = s.newDConn(cred)
		}
		s.conns[int32(fd)] = c
		return
	}
}

// readFrom handles a frame waiting on c. One per event: epoll is
// level-triggered and reports c again while frames wait, so reading on
// to EAGAIN would cost a failing recvmsg per frame, and one frame per
// turn keeps the connections fair; but after a multicast signal it reads
// on, up to maxBurst frames, and what they sent goes out in one batch
// per receiver (flushDirty). After a hang-up it reads on to the end.
func (s *masterState) readFrom(c *mconn, hup bool) {
	s.batching = true
	defer s.flushDirty(c)
	limit := int(s.welcome.MaxFDs) + 1
	n := 1
	if hup {
		n = 1 << 20
	}
	for i := 0; i < n && !c.dead && (!c.paused || hup); i++ {
		msg, err := c.c.Recv(s.buf, limit)
		if err != nil {
			switch {
			case errors.Is(err, fdpass.ErrWouldBlock):
				if c.wclosed {
					s.kill(c, GoneDied, "") // all it sent is handled
				}
				return
			case errors.Is(err, io.EOF), errors.Is(err, unix.ECONNRESET):
				// Closed, or closed with frames from the master unread.
				s.kill(c, GoneDied, "")
			case errors.Is(err, fdpass.ErrTruncated):
				s.fail(c, 0, 0, CodeTooLarge, 0, "frame longer than max_frame − 64 bytes, or more fds than max_fds + 1")
				s.kill(c, GoneDied, "TOO_LARGE")
			case errors.Is(err, fdpass.ErrFDLimit):
				// The kernel closed what did not fit and the packet is
				// consumed; the framing of SEQPACKET is intact.
				s.fail(c, 0, 0, CodeFDLimit, uint32(errnoIn(err, unix.EMFILE)), "the master had no fd free for the frame's fds; they were closed, the frame was not delivered")
			default:
				s.kill(c, GoneDied, err.Error())
			}
			return
		}
		if msg.N == 0 {
			msg.Close()
			s.kill(c, GoneDied, "")
			return
		}
		s.handle(c, s.buf[:msg.N], msg.Files, msg.Cred)
		if s.published && !hup && i+1 < maxBurst {
			n = i + 2
		}
		s.published = false
	}
}

func errnoIn(err error, def syscall.Errno) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return def
}

// flushDirty ends a batch of frames read from c: it writes the queues
// that frames went to, then checks whether c, whose frames may still
// wait in them, must pause.
func (s *masterState) flushDirty(c *mconn) {
	s.batching, s.published = false, false
	for i, d := range s.dirty {
		s.dirty[i] = nil
		d.dirty = false
		if !d.dead {
			s.flush(d)
		}
	}
	s.dirty = s.dirty[:0]
	s.checkPause(c)
}

// send queues b (and files, which it takes) for c and writes what the
// socket takes now, or at the end of the batch. The master's own frames
// and answers always queue; data frames were checked against the queue
// bounds by the caller.
func (s *masterState) send(c *mconn, o outFrame) {
	if c.dead || c.wclosed {
		closeAll(o.files)
		return
	}
	if c.d != nil && !o.dbus {
		if o = s.toDBus(c, o); o.b == nil {
			return
		}
	}
	if len(c.out) == 0 && s.batching {
		// The socket had room (or EPOLLOUT would be set and the queue
		// not empty): flushDirty writes it.
		if !c.dirty {
			c.dirty = true
			s.dirty = append(s.dirty, c)
		}
	} else if len(c.out) == 0 {
		var err error
		if c.d != nil {
			// A byte stream: what did not fit stays queued from where
			// the write stopped (writeDBus).
			var n int
			n, err = c.c.Send(o.b, o.files...)
			c.d.off = n
		} else {
			err = c.write(o)
		}
		if err == nil {
			closeAll(o.files)
			if c.d != nil {
				c.d.off = 0
			}
			return
		}
		if !wouldBlock(err) {
			s.sendFailed(c, o, err)
			return
		}
	}
	old := cap(c.out)
	c.out = append(c.out, o)
	if cap(c.out) != old {
		c.outBase = c.out[:0] // a new array: out starts at its start
	}
	c.outBytes += len(o.b) + 128
	if o.from != nil && o.data {
		if c.shares == nil {
			c.shares = map[*mconn]*share{}
		}
		sh := c.shares[o.from]
		if sh == nil {
			sh = &share{}
			c.shares[o.from] = sh
		}
		sh.msgs++
		sh.bytes += len(o.b) + 128
	}
	if o.from != nil {
		s.hold(o, 1)
		if !s.batching {
			// In a batch the sender is the connection being read,
			// checked when the batch is out (flushDirty): its frames
			// that went out then do not count.
			s.checkPause(o.from)
		}
	}
	s.checkPause(c)
	if !c.dirty {
		s.want(c)
	}
}

// write sends one frame on c's socket, without waiting. A frame without
// fds is one send(2) on the SEQPACKET socket with no control data: no
// SCM_RIGHTS, so not through fdpass, whose general path (fds held open,
// several parts, the netpoller's closure) costs allocations per frame,
// and the master sends one frame per delivery.
func (c *mconn) write(o outFrame) error {
	if len(o.files) > 0 {
		_, err := c.c.Send(o.b, o.files...)
		return err
	}
	for {
		err := unix.Sendto(c.fd, o.b, unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT, nil)
		switch err {
		case nil:
			return nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return errWouldBlock
		}
		return os.NewSyscallError("send", err)
	}
}

// errWouldBlock is write's EAGAIN: the frame waits in the queue.
var errWouldBlock = &fdpass.OpError{Op: "send", Kind: fdpass.ErrWouldBlock, Err: unix.EAGAIN}

func wouldBlock(err error) bool { return err == errWouldBlock || errors.Is(err, fdpass.ErrWouldBlock) }

// writeDBus writes the head of a D-Bus connection's queue from where the
// last write stopped (a byte stream: fds travel with a message's first
// byte); 1 once it went whole.
func (s *masterState) writeDBus(c *mconn) (int, error) {
	o := c.out[0]
	if len(o.files) > 0 && c.d.off == 0 {
		// Its fds go with its first byte, through fdpass: alone.
		n, err := c.c.Send(o.b, o.files...)
		c.d.off += n
		if err != nil {
			return 0, err
		}
		c.d.off = 0
		return 1, nil
	}
	// The head (from where the last write stopped) and the messages
	// after it that carry no fds, in one sendmsg: a burst of signals to
	// a D-Bus receiver costs one system call, not one per message.
	k := 1
	for k < len(c.out) && k < mmsgMax && len(c.out[k].files) == 0 {
		k++
	}
	bufs := s.dbufs[:0]
	bufs = append(bufs, o.b[c.d.off:])
	for i := 1; i < k; i++ {
		bufs = append(bufs, c.out[i].b)
	}
	var n int
	var err error
	for {
		n, err = unix.SendmsgBuffers(c.fd, bufs, nil, nil, unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT)
		if err != unix.EINTR {
			break
		}
	}
	clear(bufs)
	s.dbufs = bufs[:0]
	if err == unix.EAGAIN {
		return 0, errWouldBlock
	}
	if err != nil {
		return 0, os.NewSyscallError("sendmsg", err)
	}
	done := 0
	for i := 0; i < k; i++ {
		rest := len(c.out[i].b) - c.d.off
		if n < rest {
			c.d.off += n
			return done, errWouldBlock // the rest waits for EPOLLOUT
		}
		n -= rest
		c.d.off = 0
		done++
	}
	return done, nil
}

// sendFailed handles a frame the kernel refused for c: fds in flight
// (ETOOMANYREFS) cost only the frame, which its sender hears of; anything
// else means c is gone.
func (s *masterState) sendFailed(c *mconn, o outFrame, err error) {
	closeAll(o.files)
	if errors.Is(err, fdpass.ErrTooManyRefs) {
		if o.from != nil && !o.from.dead && o.data {
			s.fail(o.from, o.serial, o.source, CodeFDLimit, uint32(unix.ETOOMANYREFS),
				"the master could not pass the frame's fds on: too many fds in flight (the receiver is not reading)")
		}
		return
	}
	if errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNRESET) {
		// It closed: a death like EOF, nothing to log. But what it sent
		// before it closed (a signal, then exit) is still in the socket:
		// the loop reads it to the end, then kills it (readFrom,
		// readDBus). Nothing more is written to it.
		c.wclosed = true
		c.out = s.dropQueue(c.out)
		c.outBytes, c.shares = 0, nil
		if c.d != nil {
			c.d.off = 0
		}
		s.want(c)
		return
	}
	s.kill(c, GoneDied, "send: "+err.Error())
}

// flush writes c's queue until the socket is full.
func (s *masterState) flush(c *mconn) {
	for len(c.out) > 0 && !c.dead {
		k, err := s.writeQueue(c)
		for range k {
			closeAll(s.pop(c).files)
		}
		if err == nil {
			continue
		}
		if wouldBlock(err) {
			break
		}
		s.sendFailed(c, s.pop(c), err)
	}
	if c.outBytes <= int(s.welcome.QueueBytes)/2 && len(c.out) <= int(s.welcome.QueueMsgs)/2 {
		delete(s.stalled, c) // it reads: not stuck
	}
	if len(c.out) == 0 {
		// Keep a small array for the next batch (pop cleared what it
		// held), rather than growing a new one each time.
		c.out = nil
		if cap(c.outBase) <= mmsgMax {
			c.out = c.outBase
		} else {
			c.outBase = nil
		}
		if c.lost > 0 && !c.dead {
			since := c.lost
			c.lost = 0
			c.lostTotal += since
			if fr, err := Lost(0, c.primary.addr, since, c.lostTotal); err == nil {
				s.sendFrame(c, fr)
			}
		}
	}
	s.checkPause(c)
	s.want(c)
}

// pop takes the first frame off c's queue, with its accounting.
func (s *masterState) pop(c *mconn) outFrame {
	o := c.out[0]
	c.out[0] = outFrame{}
	c.out = c.out[1:]
	c.outBytes -= len(o.b) + 128
	c.unshare(o)
	if o.from != nil {
		s.hold(o, -1)
		s.checkPause(o.from)
	}
	return o
}

// mmsgMax is how many frames one sendmmsg takes.
const mmsgMax = 64

// writeQueue writes frames from the head of c's queue: the frames without
// fds that lead it in one sendmmsg (each its own SEQPACKET packet), or
// the first frame alone. It returns how many went, and the error of the
// next one if it did not go (nil when it was not tried).
func (s *masterState) writeQueue(c *mconn) (int, error) {
	if c.d != nil {
		return s.writeDBus(c)
	}
	k := 0
	for k < len(c.out) && k < mmsgMax && len(c.out[k].files) == 0 {
		k++
	}
	if k <= 1 {
		if err := c.write(c.out[0]); err != nil {
			return 0, err
		}
		return 1, nil
	}
	if s.mmsg == nil {
		s.mmsg, s.iov = make([]unix.Mmsghdr, mmsgMax), make([]unix.Iovec, mmsgMax)
	}
	for i := range k {
		b := c.out[i].b
		s.iov[i] = unix.Iovec{Base: unsafe.SliceData(b)}
		s.iov[i].SetLen(len(b))
		s.mmsg[i] = unix.Mmsghdr{Hdr: unix.Msghdr{Iov: &s.iov[i], Iovlen: 1}}
	}
	defer clear(s.iov[:k]) // hold no frame's bytes past the call
	for {
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(c.fd), uintptr(unsafe.Pointer(&s.mmsg[0])), uintptr(k),
			unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, errWouldBlock
		}
		return 0, os.NewSyscallError("sendmmsg", e)
	}
}

// checkPause stops reading an endpoint whose answers pile up unread or
// whose frames fill others' queues, and reads it again once they drain
// to half.
func (s *masterState) checkPause(c *mconn) {
	if c.dead {
		return
	}
	over := c.outBytes > int(s.welcome.QueueBytes) || len(c.out) > int(s.welcome.QueueMsgs) ||
		c.held > int(s.welcome.SenderMsgs) || c.heldFDs > int(s.welcome.FDsInFlight)
	under := c.outBytes <= int(s.welcome.QueueBytes)/2 && len(c.out) <= int(s.welcome.QueueMsgs)/2 &&
		c.held <= int(s.welcome.SenderMsgs)/2 && c.heldFDs <= int(s.welcome.FDsInFlight)/2
	switch {
	case over && !c.paused:
		c.paused = true
		s.want(c)
	case under && c.paused:
		c.paused = false
		s.want(c)
	}
}

// want registers the events c waits for.
func (s *masterState) want(c *mconn) {
	if c.dead {
		return
	}
	var ev uint32
	if !c.paused || c.wclosed {
		ev |= unix.EPOLLIN
	}
	if len(c.out) > 0 {
		ev |= unix.EPOLLOUT
	}
	if ev != c.events {
		c.events = ev
		s.m.epollMod(c.fd, ev)
	}
}

// room reports whether c's queue takes a data frame of n bytes from
// sender from: within the queue's bounds and within from's share of it,
// so that one sender cannot fill another's room at the same receiver.
func (s *masterState) room(c *mconn, n int, from *mconn) bool {
	if from != nil {
		if u := s.users[from.cred.UID]; u != nil && u.bytes+n > s.userMax.bytes {
			return false // the sender's user holds its share of the master already
		}
	}
	if len(c.out) == 0 {
		return true // an empty queue takes one frame of any size (a D-Bus message may exceed the shares)
	}
	if len(c.out) >= int(s.welcome.QueueMsgs) || c.outBytes+n+128 > int(s.welcome.QueueBytes) {
		s.stall(c)
		return false
	}
	if sh := c.shares[from]; sh != nil && from != nil &&
		(sh.msgs >= int(s.welcome.ShareMsgs) || sh.bytes+n+128 > int(s.welcome.ShareBytes)) {
		s.stall(c)
		return false
	}
	return true
}

// unshare takes a frame that left c's queue off its sender's share.
func (c *mconn) unshare(o outFrame) {
	if o.from == nil || !o.data {
		return
	}
	if sh := c.shares[o.from]; sh != nil {
		sh.msgs--
		sh.bytes -= len(o.b) + 128
		if sh.msgs <= 0 {
			delete(c.shares, o.from)
			if len(c.shares) == 0 {
				c.shares = nil
			}
		}
	}
}

// frame encodes f from the master to c, with the next serial of c.
func (s *masterState) sendFrame(c *mconn, f *Frame, files ...*os.File) {
	if c.dead {
		closeAll(files)
		return
	}
	c.serial++
	f.Serial = c.serial
	f.Source = AddrBus
	b, err := f.MarshalBinary()
	if err != nil {
		closeAll(files)
		s.m.logf("bus: internal: encoding %v: %v", f.Type, err)
		return
	}
	if !s.noCopy {
		s.copySent(c, b, files)
	}
	s.send(c, outFrame{b: b, files: files})
}

// answer sends a control answer of type t with body to c.
func (s *masterState) answer(c *mconn, t Type, replySerial uint64, body []byte, files ...*os.File) {
	dest := uint64(0)
	if c.primary != nil {
		dest = c.primary.addr
	}
	s.sendFrame(c, &Frame{Type: t, ReplySerial: replySerial, Destination: dest, Body: body,
		NFDs: uint16(len(files))}, files...)
}

func (s *masterState) done(c *mconn, replySerial, v, v2 uint64) {
	s.answer(c, TypeDone, replySerial, DoneBody{Value: v, Value2: v2}.Encode())
}

// fail sends FAIL: to the refused frame's serial and source (0 for a
// request: the primary address).
func (s *masterState) fail(c *mconn, replySerial, source uint64, code Code, errno uint32, text string) {
	if errno == 0 {
		errno = uint32(code.Errno())
	}
	if c.dead {
		return
	}
	if s.mon.cur != nil && c == s.mon.curConn && replySerial == s.mon.cur.Serial {
		s.mon.refused = true
	}
	dest := source
	if dest == 0 && c.primary != nil {
		dest = c.primary.addr
	}
	s.sendFrame(c, &Frame{Type: TypeFail, ReplySerial: replySerial, Destination: dest,
		Body: FailBody{Code: code, Errno: errno, Text: text}.Encode()})
}

// kill ends an endpoint: its names are handed over, calls toward it fail,
// its channels' peers and the watchers are told, and its socket is closed,
// before the master handles any other frame.
func (s *masterState) kill(c *mconn, reason uint32, why string) {
	if c.dead {
		return
	}
	c.dead = true
	c.gone = reason
	s.toKill = append(s.toKill, c)
	if why != "" && c.joined && reason != GoneLeft {
		s.m.logf("bus: %s (pid %d, uid %d) dropped: %s", FormatAddress(c.primary.addr), c.cred.PID, c.cred.UID, why)
	}
	if s.killing {
		return
	}
	s.killing = true
	for len(s.toKill) > 0 {
		d := s.toKill[0]
		s.toKill = s.toKill[1:]
		s.cleanup(d, d.gone)
	}
	s.toKill = nil
	s.killing = false
}

func (s *masterState) cleanup(c *mconn, reason uint32) {
	// Flush what can still go (a FAIL explaining why), then close.
	for _, o := range c.out {
		if o.from != nil {
			s.hold(o, -1)
			s.checkPause(o.from)
		}
	}
	if len(c.out) > 0 && c.d == nil {
		for _, o := range c.out {
			if o.from == nil && !o.data {
				if _, err := c.c.Send(o.b); err != nil {
					break
				}
			}
		}
	}
	for _, o := range c.out {
		closeAll(o.files)
	}
	c.out, c.outBase, c.outBytes, c.shares = nil, nil, 0, nil
	if c.d != nil {
		c.d.drop()
	}
	unix.EpollCtl(s.m.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
	delete(s.conns, int32(c.fd))
	c.c.Close()
	s.dropMatches(c)
	if c.monitor {
		s.monitorLeft(c)
	}
	if !c.joined {
		return
	}
	s.endpoints--
	if s.perUID[c.cred.UID]--; s.perUID[c.cred.UID] <= 0 {
		delete(s.perUID, c.cred.UID)
	}
	for _, a := range c.addrs {
		s.removeAddr(a, reason)
	}
	c.addrs = nil
	// Its frames still queued elsewhere stay there: they were accepted.
	// Readers paused because of it are re-checked as they drain.
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// handle decodes and dispatches one frame from c; it owns files.
func (s *masterState) handle(c *mconn, b []byte, files []*os.File, cred *fdpass.Cred) {
	r := s.rules(c)
	f, err := r.Decode(b, len(files))
	if err != nil {
		closeAll(files)
		var serial, source uint64
		t := Type(0)
		if len(b) >= HeaderSize {
			t = Type(b[1])
			serial = binary.LittleEndian.Uint64(b[16:])
			source = binary.LittleEndian.Uint64(b[32:])
		}
		code := CodeOf(err)
		if code == 0 {
			code = CodeMalformed
		}
		text := errText(err)
		if !t.Data() || source <= AddrBus {
			source = 0
		}
		s.fail(c, serial, source, code, 0, text)
		if code.FatalFor(t) || !c.joined {
			s.kill(c, GoneDied, code.String()+": "+text)
		}
		return
	}
	s.beginCopy(c, f, len(files))
	defer s.endCopy()
	if !c.joined {
		s.hello(c, f, cred)
		return
	}
	if c.monitor && f.Type != TypeBye {
		closeAll(files)
		s.fail(c, f.Serial, 0, CodeMalformed, 0, "a monitor only receives: "+f.Type.String()+" is not allowed (only BYE)")
		s.kill(c, GoneDied, "MALFORMED from a monitor")
		return
	}
	if f.Type.Data() {
		s.route(c, f, files)
		return
	}
	closeAll(files) // the decoder refuses fds on control frames; belt and braces
	if f.Source != c.primary.addr {
		s.fail(c, f.Serial, 0, CodeBadSource, 0, "a request's source must be the endpoint's primary address "+FormatAddress(c.primary.addr))
		return
	}
	s.request(c, f)
}

// shutdown tells every connection the master is stopping and closes it.
func (s *masterState) shutdown() {
	if s.conns == nil {
		return
	}
	for _, c := range s.conns {
		if c.dead {
			continue
		}
		c.dead = true
		b, err := (&Frame{Type: TypeFail, Serial: c.serial + 1, Source: AddrBus, Destination: destOf(c),
			Body: FailBody{Code: CodeShuttingDown, Errno: uint32(unix.ESHUTDOWN), Text: "the bus master is stopping"}.Encode()}).MarshalBinary()
		if err == nil && len(c.out) == 0 && c.d == nil {
			c.c.Send(b)
		}
		if c.d != nil {
			c.d.drop()
		}
		for _, o := range c.out {
			closeAll(o.files)
		}
		c.out = nil
		c.c.Close()
	}
	s.conns = nil
}

func destOf(c *mconn) uint64 {
	if c.primary != nil {
		return c.primary.addr
	}
	return 0
}

// stall notes that c's queue, or a sender's share of it, was found full
// (for StallTimeout); the mark goes when c reads again.
func (s *masterState) stall(c *mconn) {
	if s.m.StallTimeout <= 0 || c.dead {
		return
	}
	if s.stalled == nil {
		s.stalled = map[*mconn]time.Time{}
	}
	if _, ok := s.stalled[c]; !ok {
		s.stalled[c] = time.Now()
	}
}

// expelStalled expels the endpoints whose queue stayed full for
// StallTimeout.
func (s *masterState) expelStalled(now time.Time) {
	for c, since := range s.stalled {
		if c.dead {
			delete(s.stalled, c)
			continue
		}
		if now.Sub(since) >= s.m.StallTimeout {
			delete(s.stalled, c)
			c.out, c.outBytes = s.dropQueue(c.out), 0
			s.fail(c, 0, 0, CodeExpelled, 0, "the queue at the master stayed full for "+s.m.StallTimeout.String())
			s.kill(c, GoneExpelled, "EXPELLED: its queue stayed full for "+s.m.StallTimeout.String())
		}
	}
}

// dropQueue closes the fds of an abandoned queue.
func (s *masterState) dropQueue(out []outFrame) []outFrame {
	for _, o := range out {
		closeAll(o.files)
		s.hold(o, -1)
	}
	return nil
}
