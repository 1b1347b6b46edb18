package bus

import "context"

// Call calls dest (an address ":1.N" or a well-known name) with m and
// waits for the answer until ctx ends. The first call to a destination
// connects to it (CONNECT; a direct channel unless the master routes the
// pair), later ones reuse the path. It returns the REPLY (the caller owns
// its Files), a *CallError for an ERROR with an application name, or an
// *Error: PEER_GONE when the callee leaves or closes the channel with the
// call pending, REVOKED, TIMEOUT when ctx ends first, FDS_REFUSED, and
// whatever the master refused with. A call by name whose owner changed
// under it (NAME_MOVED) is resolved again and retried once. m.Files are
// borrowed; m.Payload is consumed. A large body goes as a sealed memfd
// (see Message); a peer that takes no memfds gets FDS_REFUSED locally.
// With FlagNoReplyExpected Call returns (nil, nil) once sent.
func (e *Endpoint) Call(ctx context.Context, dest string, m *Message) (*Message, error) {
	if m == nil {
		return nil, local("call", CodeInvalid, "no message")
	}
	if err := CheckMember(m.Member); err != nil {
		return nil, err
	}
	return e.data(ctx, TypeCall, dest, m)
}

// Send sends m as a unicast SIGNAL to dest (an address or a name), on the
// same path as calls. m needs Path, Interface and Member. The receiver
// gets it as a Notice on the Watchers whose rules it matches. m.Files are
// borrowed.
func (e *Endpoint) Send(ctx context.Context, dest string, m *Message) error {
	if m == nil {
		return local("send", CodeInvalid, "no message")
	}
	_, err := e.data(ctx, TypeSignal, dest, m)
	return err
}

// data sends a CALL or SIGNAL, retrying once on NAME_MOVED.
func (e *Endpoint) data(ctx context.Context, t Type, dest string, m *Message) (*Message, error) {
	if m.Payload != nil {
		// Sealed once, here, so that a retry sends the same memfd.
		p := m.Payload
		if len(m.Body) != 0 {
			p.Close()
			return nil, local("send", CodeInvalid, "both a Body and a Payload")
		}
		sf, err := p.seal()
		p.Close()
		if err != nil {
			return nil, err
		}
		defer sf.Close()
		mm := *m
		mm.Payload, mm.sealed, mm.sealedSize = nil, sf, p.size
		m = &mm
	}
	var addr uint64
	name := ""
	if len(dest) > 0 && dest[0] == ':' {
		a, err := ParseAddress(dest)
		if err != nil {
			return nil, err
		}
		addr = a
	} else {
		if err := CheckName(dest); err != nil {
			return nil, err
		}
		name = dest
	}
	for attempt := 0; ; attempt++ {
		p, err := e.peerFor(ctx, addr, name)
		if err != nil {
			return nil, err
		}
		var r *Message
		if p.routed {
			r, err = e.sendRouted(ctx, p, t, name, m)
		} else {
			r, err = p.ch.call(ctx, t, name, m)
		}
		if err == errChannelClosed && attempt < 2 {
			continue // closed under us before anything was sent: connect again
		}
		if name != "" && attempt == 0 && CodeOf(err) == CodeNameMoved {
			e.mu.Lock()
			if e.names[name] == p.addr {
				delete(e.names, name)
			}
			e.mu.Unlock()
			continue
		}
		return r, err
	}
}

// peerFor returns the path to addr, or to the owner of name, connecting
// when there is none yet. Concurrent callers share one CONNECT.
func (e *Endpoint) peerFor(ctx context.Context, addr uint64, name string) (*outPeer, error) {
	key := name
	if name == "" {
		key = FormatAddress(addr)
	}
	e.mu.Lock()
	if e.closed {
		err := e.closeErr
		e.mu.Unlock()
		return nil, err
	}
	a := addr
	if name != "" {
		a = e.names[name]
	}
	if p := e.peers[a]; a != 0 && p != nil {
		if p.ch == nil || !p.ch.isClosed() {
			e.mu.Unlock()
			return p, nil
		}
		delete(e.peers, a) // closing: its close removes it too
	}
	d := e.dialing[key]
	if d == nil {
		// The CONNECT runs on its own, bound to the endpoint's life and
		// not to this caller's ctx, so that a caller with a short
		// deadline does not fail the others waiting for it.
		d = &dialWait{done: make(chan struct{})}
		e.dialing[key] = d
		e.wg.Add(1)
		go e.dial(key, d, addr, name)
	}
	e.mu.Unlock()
	select {
	case <-d.done:
		return d.p, d.err
	case <-ctx.Done():
		return nil, local("connect", CodeTimeout, "%v", ctx.Err())
	}
}

// dial runs one CONNECT for every caller waiting on d.
func (e *Endpoint) dial(key string, d *dialWait, addr uint64, name string) {
	defer e.wg.Done()
	p, err := e.connect(e.ctx, addr, name)
	e.mu.Lock()
	delete(e.dialing, key)
	var extra *channel
	if err == nil {
		if old := e.peers[p.addr]; old != nil && (old.ch == nil || !old.ch.isClosed()) {
			// Another CONNECT (by the other spelling) won: keep one
			// path per pair.
			extra = p.ch
			p = old
		} else {
			e.peers[p.addr] = p
		}
		if name != "" {
			e.names[name] = p.addr
		}
	}
	d.p, d.err = p, err
	e.mu.Unlock()
	close(d.done)
	if extra != nil {
		extra.sendEnd()
		extra.close(local("call", CodePeerGone, "duplicate channel"), true)
	}
}

// connect sends CONNECT and keeps what INTRODUCE gives.
func (e *Endpoint) connect(ctx context.Context, addr uint64, name string) (*outPeer, error) {
	cb := ConnectBody{Source: e.welcome.Address, Destination: addr, Name: name}
	if e.opts.Routed {
		cb.Flags |= ConnectRouted
	}
	a, err := e.request(ctx, TypeConnect, cb.Encode())
	if err != nil {
		closeFiles(a.files)
		return nil, err
	}
	in, err := ParseIntroduce(a.f.Body, a.f.NFDs)
	if err != nil {
		closeFiles(a.files)
		return nil, err
	}
	p := &outPeer{addr: in.Peer, accepts: in.PeerAccepts}
	if in.Mode == ModeRouted {
		closeFiles(a.files)
		p.routed = true
		return p, nil
	}
	if len(a.files) != 1 {
		closeFiles(a.files)
		return nil, local("connect", CodeMalformed, "INTRODUCE with %d fds", len(a.files))
	}
	c, err := e.newChannel(in, a.files[0])
	if err != nil {
		e.forget(TypeDisconnect, U64Body(in.Channel))
		return nil, err
	}
	p.ch = c
	return p, nil
}

// call sends a CALL or SIGNAL on the channel and, for a CALL that wants
// one, waits for the answer.
func (c *channel) call(ctx context.Context, t Type, name string, m *Message) (*Message, error) {
	if len(m.Files) > 0 && c.accepts&PeerAcceptsFDs == 0 {
		return nil, local("call", CodeFdsRefused, "%s accepts no fds", FormatAddress(c.peer))
	}
	f, err := m.dataFrame(t, name)
	if err != nil {
		return nil, err
	}
	files, mf, err := c.e.attachPayload(f, m, c.accepts)
	if err != nil {
		return nil, err
	}
	if mf != nil {
		defer mf.Close()
	}
	f.Serial = c.e.serial.Add(1)
	f.Source, f.Destination = c.local, c.peer
	if t != TypeCall || m.Flags&FlagNoReplyExpected != 0 {
		if c.isClosed() {
			return nil, errChannelClosed
		}
		return nil, c.sendCtx(ctx, f, files)
	}
	p := &pendingCall{ch: make(chan answer, 1), peer: c.peer}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, errChannelClosed
	}
	c.pending[f.Serial] = p
	c.mu.Unlock()
	if err := c.sendCtx(ctx, f, files); err != nil {
		c.mu.Lock()
		delete(c.pending, f.Serial)
		c.mu.Unlock()
		return nil, err
	}
	if mf != nil {
		// Sent: the receiver holds it now. Closed before the wait, the
		// memfd's pages are freed when the receiver lets go, off this
		// call's path.
		mf.Close()
	}
	return c.wait(ctx, f.Serial, p)
}

// wait waits for a pending call's answer or ctx's end. When nobody
// reads the channel the caller reads it itself (readFor).
func (c *channel) wait(ctx context.Context, serial uint64, p *pendingCall) (*Message, error) {
	c.mu.Lock()
	read := !c.reading && !c.closed
	if read {
		c.reading = true
	}
	c.mu.Unlock()
	if read {
		c.readFor(ctx, p)
	}
	select {
	case a := <-p.ch:
		return a.message()
	case <-ctx.Done():
		c.mu.Lock()
		_, waiting := c.pending[serial]
		delete(c.pending, serial)
		c.mu.Unlock()
		if !waiting {
			return (<-p.ch).message()
		}
		return nil, local("call", CodeTimeout, "%v", ctx.Err())
	}
}

// message is the answer as Call returns it.
func (a answer) message() (*Message, error) {
	if a.err != nil {
		dropFrame(a.f, a.files)
		return nil, a.err
	}
	return messageOf(a.f, a.files), nil
}

// sendRouted sends a CALL or SIGNAL on the master connection and, for a
// CALL that wants one, waits for the answer there.
func (e *Endpoint) sendRouted(ctx context.Context, p *outPeer, t Type, name string, m *Message) (*Message, error) {
	if len(m.Files) > 0 && p.accepts&PeerAcceptsFDs == 0 {
		return nil, local("call", CodeFdsRefused, "%s accepts no fds", FormatAddress(p.addr))
	}
	f, err := m.dataFrame(t, name)
	if err != nil {
		return nil, err
	}
	files, mf, err := e.attachPayload(f, m, p.accepts)
	if err != nil {
		return nil, err
	}
	if mf != nil {
		defer mf.Close()
	}
	f.Serial = e.serial.Add(1)
	f.Source, f.Destination = e.welcome.Address, p.addr
	wants := t == TypeCall && m.Flags&FlagNoReplyExpected == 0
	// The master answers a refused frame with FAIL even for a signal;
	// keep a slot for it either way so that it is not logged as stray.
	pc := &pendingCall{ch: make(chan answer, 1), peer: p.addr}
	e.mu.Lock()
	if e.closed {
		err := e.closeErr
		e.mu.Unlock()
		return nil, err
	}
	if wants {
		e.calls[f.Serial] = pc
	}
	e.mu.Unlock()
	if err := e.sendCtx(ctx, f, files); err != nil {
		e.mu.Lock()
		delete(e.calls, f.Serial)
		e.mu.Unlock()
		return nil, err
	}
	if mf != nil {
		mf.Close() // sent: freed when the receiver lets go, as on a channel
	}
	if !wants {
		return nil, nil
	}
	select {
	case a := <-pc.ch:
		return a.message()
	case <-ctx.Done():
		e.mu.Lock()
		_, waiting := e.calls[f.Serial]
		delete(e.calls, f.Serial)
		e.mu.Unlock()
		if !waiting {
			return (<-pc.ch).message()
		}
		return nil, local("call", CodeTimeout, "%v", ctx.Err())
	}
}

// errChannelClosed: the cached channel closed before the frame was sent;
// the call connects again.
var errChannelClosed = local("call", CodePeerGone, "channel closed")

// isClosed reports whether the channel has closed. It takes no lock:
// peerFor asks it under e.mu, and the lock order is c.mu, then e.mu.
func (c *channel) isClosed() bool { return c.gone.Load() }
