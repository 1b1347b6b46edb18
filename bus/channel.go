package bus

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/porter-ipc/porter/fdpass"
	"golang.org/x/sys/unix"
)

// channel is one end of a direct channel the master introduced.
type channel struct {
	e       *Endpoint
	id      uint64
	conn    *fdpass.Conn
	local   uint64 // our address on it
	peer    uint64 // the peer's address on it
	role    uint8  // RoleInitiator: we call; RoleAcceptor: we answer
	cred    fdpass.Cred
	names   []string
	accepts uint8 // what the peer accepts
	ctx     context.Context
	cancel  context.CancelFunc

	file *os.File // the socket, for read deadlines
	out  gate     // its sends, one at a time, each bounded by its ctx
	buf  []byte   // read buffer, used by whoever reads (c.reading)

	gone atomic.Bool // closed, readable without c.mu

	// mu is taken before e.mu where both are held (release).
	mu      sync.Mutex
	reading bool // initiator: a caller or a goroutine is reading
	// draining: REVOKE MONITOR came; an initiator reads on, calls or
	// not, until the peer's END or EOF lets it close and DISCONNECT.
	draining bool
	pending  map[uint64]*pendingCall // initiator: calls awaiting an answer
	closed   bool
	ended    bool // we sent END
	peerEnd  bool // the peer sent END
}

// newChannel wraps a channel end from an INTRODUCE; it owns f.
func (e *Endpoint) newChannel(in IntroduceBody, f *os.File) (*channel, error) {
	f, err := pollable(f)
	if err != nil {
		return nil, err
	}
	conn, err := fdpass.NewConn(f)
	if err != nil {
		return nil, err
	}
	c := &channel{e: e, id: in.Channel, conn: conn, file: f, local: in.Local, peer: in.Peer, role: in.Role,
		cred: credOf(in.PID, in.UID, in.GID), names: in.Names, accepts: in.PeerAccepts,
		pending: map[uint64]*pendingCall{}, out: newGate(f)}
	c.ctx, c.cancel = context.WithCancel(e.ctx)
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		c.cancel()
		conn.Close()
		return nil, e.closeErr
	}
	e.channels[c.id] = c
	if c.role == RoleAcceptor {
		// An acceptor reads for the channel's life; an initiator reads
		// only while calls wait (wait, readFor).
		e.wg.Add(1)
		go c.read()
	}
	e.mu.Unlock()
	return c, nil
}

// pollable returns f as a non-blocking file that Go's netpoller waits
// on, so that a reader blocked on it ends when it is closed. O_NONBLOCK
// belongs to the open file description, which the master created: a
// channel end may arrive blocking, and os.File decides whether to poll
// when it is made. It takes ownership of f (closed on error, or replaced).
func pollable(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	nfd := -1
	cerr := rc.Control(func(fd uintptr) {
		if err = unix.SetNonblock(int(fd), true); err != nil {
			return
		}
		nfd, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	})
	f.Close()
	if cerr != nil {
		err = cerr
	}
	if err != nil {
		if nfd >= 0 {
			unix.Close(nfd)
		}
		return nil, &os.SyscallError{Syscall: "fcntl", Err: err}
	}
	return os.NewFile(uintptr(nfd), "bus-channel"), nil
}

// accept keeps a channel a peer asked for (INTRODUCE role ACCEPTOR).
func (e *Endpoint) accept(in IntroduceBody, files []*os.File) {
	if in.Mode != ModeDirect || len(files) != 1 || in.Local != e.welcome.Address {
		closeFiles(files)
		if in.Mode == ModeDirect {
			e.forget(TypeDisconnect, U64Body(in.Channel))
		}
		return
	}
	if _, err := e.newChannel(in, files[0]); err != nil {
		e.logf("channel %d from %s: %v", in.Channel, FormatAddress(in.Peer), err)
		e.forget(TypeDisconnect, U64Body(in.Channel))
	}
}

// read is the reader goroutine: an acceptor's for the channel's life,
// an initiator's while calls wait and no caller reads (see wait).
func (c *channel) read() {
	defer c.e.wg.Done()
	for {
		if !c.readOne() {
			if c.role == RoleInitiator {
				c.release(false)
			}
			return
		}
		if c.role == RoleInitiator {
			c.mu.Lock()
			idle := len(c.pending) == 0 && !c.draining
			if idle {
				c.reading = false
			}
			c.mu.Unlock()
			if idle {
				return
			}
		}
	}
}

// readOne reads and handles one frame. It returns false when the
// channel closed, or when the read deadline a reading caller set passed.
func (c *channel) readOne() bool {
	if c.buf == nil {
		c.buf = make([]byte, c.e.welcome.MaxFrame)
	}
	m, err := c.conn.Recv(c.buf, int(c.e.welcome.MaxFDs)+1)
	if err != nil {
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			return false // a caller's ctx ended; the channel is fine
		case errors.Is(err, io.EOF):
			c.close(local("call", CodePeerGone, "%s closed channel %d", FormatAddress(c.peer), c.id), true)
		default:
			c.close(local("call", CodePeerGone, "channel %d: %v", c.id, err), true)
		}
		return false
	}
	b := make([]byte, m.N)
	copy(b, c.buf[:m.N])
	f, err := c.e.chRules.Decode(b, len(m.Files))
	if err == nil && (f.Source != c.peer || f.Destination != c.local) {
		err = local("read", CodeBadSource, "frame from %s to %s on the channel of %s and %s",
			FormatAddress(f.Source), FormatAddress(f.Destination), FormatAddress(c.peer), FormatAddress(c.local))
	}
	if err == nil && c.role == RoleInitiator && (f.Type == TypeCall || f.Type == TypeSignal) {
		err = local("read", CodeMalformed, "%v from the acceptor", f.Type)
	}
	if err != nil {
		m.Close()
		c.e.logf("channel %d with %s (pid %d uid %d): %v: closing it", c.id, FormatAddress(c.peer), c.cred.PID, c.cred.UID, err)
		c.close(local("call", CodePeerGone, "channel %d closed: the peer sent a bad frame", c.id), true)
		return false
	}
	files := m.Files
	if f.Type == TypeReply || f.Type == TypeCall || f.Type == TypeSignal {
		var perr error
		if files, perr = c.e.takePayload(f, files); perr != nil {
			c.e.refusedPayload(f, perr, func(rf *Frame) error { return c.send(rf, nil) },
				func(err error) { c.fail(f, err) })
			return !c.isClosed()
		}
	}
	switch f.Type {
	case TypeReply, TypeError:
		c.answer(f, files)
	case TypeCall:
		c.serve(f, files)
	case TypeSignal:
		c.e.deliver(f, files, c.cred)
	case TypeEnd:
		m.Close()
		c.mu.Lock()
		c.peerEnd = true
		c.mu.Unlock()
		c.maybeFinish()
	}
	return !c.isClosed()
}

// readFor is a caller reading the channel itself until its call p is
// answered, ctx ends or the channel closes: when it is the only one
// waiting this saves the wake-up of a reader goroutine that would hand
// the reply over. The caller holds the reading token (c.reading) on
// entry; readFor passes it on.
func (c *channel) readFor(ctx context.Context, p *pendingCall) {
	var fired chan struct{}
	stop := func() bool { return true }
	if ctx.Done() != nil {
		fired = make(chan struct{})
		stop = context.AfterFunc(ctx, func() {
			c.file.SetReadDeadline(time.Unix(1, 0))
			close(fired)
		})
	}
	ok := true
	for ok && len(p.ch) == 0 {
		ok = c.readOne()
	}
	if !stop() {
		<-fired
	}
	c.file.SetReadDeadline(time.Time{})
	c.release(true)
}

// release gives up the reading token: to a reader goroutine when calls
// still wait (and spawn is set), to nobody otherwise.
func (c *channel) release(spawn bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if spawn && !c.closed && (len(c.pending) > 0 || c.draining) {
		c.e.mu.Lock()
		closed := c.e.closed
		if !closed {
			c.e.wg.Add(1)
		}
		c.e.mu.Unlock()
		if !closed {
			go c.read()
			return
		}
	}
	c.reading = false
}

// answer hands a REPLY or ERROR to its pending call.
func (c *channel) answer(f *Frame, files []*os.File) {
	c.mu.Lock()
	p, ok := c.pending[f.ReplySerial]
	delete(c.pending, f.ReplySerial)
	c.mu.Unlock()
	if !ok {
		dropFrame(f, files) // the caller's deadline passed: dropped
		return
	}
	if f.Type == TypeError {
		p.ch <- answer{err: errorOfReply(f, files)}
	} else {
		p.ch <- answer{f: f, files: files}
	}
	c.maybeFinish()
}

// fail fails the pending call f answers with err.
func (c *channel) fail(f *Frame, err error) {
	c.mu.Lock()
	p, ok := c.pending[f.ReplySerial]
	delete(c.pending, f.ReplySerial)
	c.mu.Unlock()
	if ok {
		p.ch <- answer{err: err}
		c.maybeFinish()
	}
}

// serve runs the Handler on a CALL that came on the channel and answers
// on it.
func (c *channel) serve(f *Frame, files []*os.File) {
	call := &Call{Message: messageOf(f, files), Sender: c.peer, Cred: c.cred, Names: c.names, Dest: f.Text(FieldDestName)}
	reply, rfiles := c.e.handle(c.ctx, call, c.local, c.accepts)
	defer call.Message.unmap() // after the reply, whose body may alias it
	if f.Flags&FlagNoReplyExpected != 0 {
		closeFiles(rfiles)
		return
	}
	reply.Serial = c.e.serial.Add(1)
	reply.ReplySerial = f.Serial
	reply.Source, reply.Destination = c.local, c.peer
	err := c.send(reply, rfiles)
	closeFiles(rfiles)
	if err != nil {
		c.e.logf("reply on channel %d: %v", c.id, err)
	}
}

// send marshals f for the channel and sends it with files.
func (c *channel) send(f *Frame, files []*os.File) error {
	return c.sendCtx(context.Background(), f, files)
}

// sendCtx is send bounded by ctx: a peer that does not read fills the
// channel's socket buffer, and the sender then waits no longer than ctx
// (TIMEOUT; on a packet socket nothing of the frame was sent).
func (c *channel) sendCtx(ctx context.Context, f *Frame, files []*os.File) error {
	b, err := c.e.chRules.Marshal(f)
	if err != nil {
		return err
	}
	if err := c.out.send(ctx, c.conn, b, files); err != nil {
		if CodeOf(err) == CodeTimeout {
			return local("send", CodeTimeout, "%v: channel %d to %s stayed full (the peer is not reading)", ctx.Err(), c.id, FormatAddress(c.peer))
		}
		if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
			return errChannelClosed // closed under us: nothing was sent
		}
		if errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNRESET) {
			// The peer closed its end (nobody was reading ours to see
			// it): nothing was sent, the next attempt connects again.
			c.close(local("call", CodePeerGone, "%s closed channel %d", FormatAddress(c.peer), c.id), true)
			return errChannelClosed
		}
		return sendError(err)
	}
	return nil
}

// handle runs the Handler on call, addressed to local, and returns the
// REPLY or ERROR frame (no addresses, no serials) and the reply's files
// (with its memfd last, when the body goes as one), which the caller
// closes once sent. accepts is what the caller takes (PeerAccepts…).
func (e *Endpoint) handle(ctx context.Context, call *Call, localAddr uint64, accepts uint8) (*Frame, []*os.File) {
	peerFDs := accepts&PeerAcceptsFDs != 0
	var reply *Message
	var err error
	e.mu.Lock()
	moved := call.Dest != "" && !e.owned[call.Dest]
	e.mu.Unlock()
	switch {
	case moved:
		call.Close()
		err = local("call", CodeNameMoved, "%s does not own %s", FormatAddress(localAddr), call.Dest)
	case len(call.Files) > 0 && e.opts.NoFDs:
		call.Close()
		err = local("call", CodeFdsRefused, "%s accepts no fds", FormatAddress(localAddr))
	case e.opts.Handler == nil:
		call.Close()
		err = &CallError{Name: ErrorUnknownMethod, Text: "no handler for " + call.Member}
	default:
		reply, err = e.opts.Handler(ctx, call)
	}
	if err == nil && reply != nil && len(reply.Files) > 0 && !peerFDs {
		reply.Close()
		err = local("reply", CodeFdsRefused, "the caller accepts no fds")
	}
	if err != nil {
		reply.Close()
		reply = errorReply(err)
	}
	if reply == nil {
		reply = &Message{}
	}
	t := TypeReply
	if reply.ErrorName != "" {
		t = TypeError
	}
	ferr := reply.sealReply()
	var rf *Frame
	if ferr == nil {
		rf, ferr = reply.dataFrame(t, "")
	}
	if ferr == nil {
		rf.Flags = 0
		if t != TypeReply {
			return rf, nil
		}
		var files []*os.File
		files, _, ferr = e.attachPayload(rf, reply, accepts)
		if ferr == nil {
			return rf, files // a memfd, sealed or made, is the last
		}
	}
	if reply.sealed != nil {
		reply.sealed.Close()
	}
	reply.Close()
	rf, _ = errorReply(ferr).dataFrame(TypeError, "")
	return rf, nil
}

// serveRouted runs the Handler on a routed CALL and answers on the
// master connection.
func (e *Endpoint) serveRouted(f *Frame, files []*os.File) {
	var cred fdpass.Cred
	if v, ok := f.Field(FieldSenderCred); ok {
		if sc, err := ParseSenderCred(v); err == nil {
			cred = credOf(sc.PID, sc.UID, sc.GID)
		}
	}
	call := &Call{Message: messageOf(f, files), Sender: f.Source, Cred: cred, Dest: f.Text(FieldDestName)}
	// The master checked the caller takes fds and memfds, if any go.
	reply, rfiles := e.handle(e.ctx, call, f.Destination, PeerAcceptsFDs|PeerAcceptsMemfd)
	defer call.Message.unmap() // after the reply, whose body may alias it
	if f.Flags&FlagNoReplyExpected != 0 {
		closeFiles(rfiles)
		return
	}
	if _, ok := reply.Field(FieldMemfd); ok && !e.takesMemfd(f.Source) {
		// The master would refuse the REPLY to us and the caller would
		// wait for ever: answer with the error instead.
		closeFiles(rfiles)
		rfiles = nil
		reply, _ = errorReply(local("reply", CodeFdsRefused, "%s accepts no memfds, and the reply needs one", FormatAddress(f.Source))).dataFrame(TypeError, "")
	}
	reply.Serial = e.serial.Add(1)
	reply.ReplySerial = f.Serial
	reply.Source, reply.Destination = f.Destination, f.Source
	err := e.send(reply, rfiles)
	closeFiles(rfiles)
	if err != nil && !errors.Is(err, ErrClosed) {
		e.logf("routed reply to %s: %v", FormatAddress(f.Source), err)
	}
}

// close ends the channel: the socket closed, pending calls failed with
// err, the master told (DISCONNECT) when tell is set and it still
// counts the channel.
func (c *channel) close(err error, tell bool) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.gone.Store(true)
	pending := c.pending
	c.pending = nil
	c.mu.Unlock()
	c.cancel()
	c.conn.Close()
	e := c.e
	e.mu.Lock()
	delete(e.channels, c.id)
	if p := e.peers[c.peer]; p != nil && p.ch == c {
		delete(e.peers, c.peer)
	}
	closed := e.closed
	e.mu.Unlock()
	for _, p := range pending {
		p.ch <- answer{err: err}
	}
	if tell && !closed {
		e.forget(TypeDisconnect, U64Body(c.id))
	}
}

// sendEnd sends END once: no more CALLs or SIGNALs from us.
func (c *channel) sendEnd() {
	c.mu.Lock()
	if c.ended || c.closed {
		c.mu.Unlock()
		return
	}
	c.ended = true
	c.mu.Unlock()
	c.send(&Frame{Type: TypeEnd, Serial: c.e.serial.Add(1), Source: c.local, Destination: c.peer}, nil)
}

// drain is REVOKE MONITOR: no new calls on the channel (they go through
// CONNECT again), END sent, closed once both sides are done.
func (c *channel) drain() {
	e := c.e
	e.mu.Lock()
	if p := e.peers[c.peer]; p != nil && p.ch == c {
		delete(e.peers, c.peer)
	}
	e.mu.Unlock()
	c.sendEnd()
	c.maybeFinish()
	if c.role != RoleInitiator {
		return // an acceptor reads for the channel's life already
	}
	// An idle initiator has nobody reading its channel: without a reader
	// the peer's END would go unseen and the master would wait out its
	// drain timeout for this channel's DISCONNECT.
	c.mu.Lock()
	c.draining = true
	start := !c.reading && !c.closed
	if start {
		c.reading = true
	}
	c.mu.Unlock()
	if start {
		c.release(true)
	}
}

// maybeFinish closes the channel once we sent END, the peer did (or we
// only answer and it did), and no call of ours is pending.
func (c *channel) maybeFinish() {
	c.mu.Lock()
	done := !c.closed && c.peerEnd && len(c.pending) == 0 && (c.ended || c.role == RoleAcceptor)
	c.mu.Unlock()
	if done {
		c.sendEnd()
		c.close(local("call", CodePeerGone, "channel %d ended", c.id), true)
	}
}

// gate serializes the sends on one socket and bounds each by its own
// context: a peer that does not read fills the socket buffer, and a sender
// then waits no longer than its ctx. On a packet socket a send the
// deadline interrupts sent nothing.
type gate struct {
	sem chan struct{}
	dl  interface{ SetWriteDeadline(time.Time) error }
}

func newGate(dl interface{ SetWriteDeadline(time.Time) error }) gate {
	return gate{sem: make(chan struct{}, 1), dl: dl}
}

// send sends b and files on conn; a ctx that ends first gives TIMEOUT.
func (g gate) send(ctx context.Context, conn *fdpass.Conn, b []byte, files []*os.File) error {
	select {
	case g.sem <- struct{}{}:
	case <-ctx.Done():
		return local("send", CodeTimeout, "%v (waiting for the socket)", ctx.Err())
	}
	defer func() { <-g.sem }()
	if ctx.Done() != nil && g.dl != nil {
		var mu sync.Mutex
		finished := false
		stop := context.AfterFunc(ctx, func() {
			mu.Lock()
			if !finished {
				g.dl.SetWriteDeadline(time.Unix(1, 0))
			}
			mu.Unlock()
		})
		defer func() {
			stop()
			mu.Lock()
			finished = true
			mu.Unlock()
			g.dl.SetWriteDeadline(time.Time{})
		}()
	}
	_, err := conn.Send(b, files...)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() != nil {
		return local("send", CodeTimeout, "%v: the socket stayed full (the peer is not reading)", ctx.Err())
	}
	return err
}
