package bus

import (
	"bytes"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

func itoa(n int) string    { return strconv.Itoa(n) }
func utoa(n uint64) string { return strconv.FormatUint(n, 10) }

// route checks a data frame on the master connection and forwards it
// (docs/protocol-bus.md, "The routed path"); it owns files.
func (s *masterState) route(c *mconn, f *Frame, files []*os.File) {
	refuse := func(code Code, errno uint32, text string) {
		closeAll(files)
		s.fail(c, f.Serial, f.Source, code, errno, text)
	}
	src := c.addrOf(f.Source)
	if src == nil {
		if c.warned < 3 {
			c.warned++
			s.m.logf("bus: %s (pid %d, uid %d) sent %v from %s, not one of its addresses",
				FormatAddress(c.primary.addr), c.cred.PID, c.cred.UID, f.Type, FormatAddress(f.Source))
		}
		refuse(CodeBadSource, 0, FormatAddress(f.Source)+" is not an address of this endpoint")
		return
	}
	if f.Multicast() {
		s.multicast(c, src, f, files)
		return
	}
	var dst *maddr
	name := f.Text(FieldDestName)
	if name != "" {
		n := s.names[name]
		if n == nil {
			refuse(CodeNameHasNoOwner, 0, "nobody owns "+name)
			return
		}
		dst = n.owner
		if f.Destination != AddrNone && f.Destination != dst.addr {
			refuse(CodeNameMoved, 0, name+" is owned by "+FormatAddress(dst.addr)+", not "+FormatAddress(f.Destination))
			return
		}
	} else if dst = s.addrs[f.Destination]; dst == nil || dst.c.monitor {
		refuse(CodeUnknownAddress, 0, "no endpoint has the address "+FormatAddress(f.Destination))
		return
	}
	var slot slotKey
	isCall := f.Type == TypeCall && f.Flags&FlagNoReplyExpected == 0
	switch f.Type {
	case TypeCall, TypeSignal:
		if d := s.talk(c, src.addr, name, dst); !d.Allow {
			refuse(CodeDenied, 0, reasonOr(d, "the policy refused "+FormatAddress(src.addr)+" → "+FormatAddress(dst.addr)))
			return
		}
	case TypeReply, TypeError:
		slot = slotKey{dst.addr, f.ReplySerial}
		if callee, ok := s.slots[slot]; !ok || callee != src {
			refuse(CodeUnexpectedReply, 0, FormatAddress(dst.addr)+" is not waiting for an answer to serial "+utoa(f.ReplySerial)+" from "+FormatAddress(src.addr))
			return
		}
	}
	if code, errno, text := s.checkFiles(f, files, dst.c); code != 0 {
		refuse(code, errno, text)
		return
	}
	if u := s.users[c.cred.UID]; u != nil && len(files) > 0 && u.fds+len(files) > s.userMax.fds {
		refuse(CodeFDLimit, uint32(unix.ETOOMANYREFS), "uid "+itoa(c.cred.UID)+" has "+itoa(u.fds)+" fds in flight through the master")
		return
	}
	size := f.Size() + 24
	if dst.c.d == nil && size > int(s.welcome.MaxFrame) {
		refuse(CodeTooLarge, 0, "the message ("+itoa(size)+" bytes) is larger than a native endpoint takes (max_frame "+itoa(int(s.welcome.MaxFrame))+")")
		return
	}
	var db []byte
	if dst.c.d != nil {
		var err error
		if db, err = dbusEncodeFrom(c, f); err != nil {
			refuse(codeOr(err, CodeInvalid), 0, errText(err))
			return
		}
		size = len(db)
	}
	if !s.room(dst.c, size, c) {
		refuse(CodeQueueFull, 0, FormatAddress(dst.addr)+"'s queue at the master, or this sender's share of it, is full (it is not reading fast enough)")
		return
	}
	if isCall {
		slot = slotKey{src.addr, f.Serial}
		if _, dup := s.slots[slot]; dup {
			refuse(CodeInvalid, 0, "serial "+utoa(f.Serial)+" has a call awaiting its answer")
			return
		}
		if c.pending >= int(s.welcome.PendingCalls) {
			refuse(CodeQueueFull, 0, "pending_calls ("+itoa(int(s.welcome.PendingCalls))+") awaiting replies")
			return
		}
		if u := s.users[c.cred.UID]; u != nil && u.slots >= s.userMax.slots {
			refuse(CodeQueueFull, 0, "uid "+itoa(c.cred.UID)+" has "+itoa(u.slots)+" calls awaiting replies on the bus")
			return
		}
		s.slots[slot] = dst
		if dst.slotsIn == nil {
			dst.slotsIn = map[slotKey]struct{}{}
		}
		dst.slotsIn[slot] = struct{}{}
		if src.slotsOut == nil {
			src.slotsOut = map[slotKey]struct{}{}
		}
		src.slotsOut[slot] = struct{}{}
		c.pending++
		s.user(c.cred.UID).slots++
	} else if f.Type == TypeReply || f.Type == TypeError {
		s.closeSlot(slot)
	}
	if db != nil {
		s.send(dst.c, outFrame{b: db, dbus: true, files: files, from: c, data: true, serial: f.Serial, source: f.Source})
		return
	}
	f.Destination = dst.addr
	f.SetField(FieldSenderCred, SenderCred{PID: uint32(c.cred.PID), UID: uint32(c.cred.UID), GID: uint32(c.cred.GID)}.Encode())
	b, err := f.AppendBinary(make([]byte, 0, f.Size()))
	if err != nil {
		refuse(CodeInternal, 0, "encoding: "+err.Error())
		return
	}
	s.send(dst.c, outFrame{b: b, files: files, from: c, data: true, serial: f.Serial, source: f.Source})
}

// closeSlot frees a reply slot once its answer passed, or its caller went.
func (s *masterState) closeSlot(k slotKey) {
	callee, ok := s.slots[k]
	if !ok {
		return
	}
	delete(s.slots, k)
	delete(callee.slotsIn, k)
	if caller := s.addrs[k.caller]; caller != nil {
		delete(caller.slotsOut, k)
		caller.c.pending--
		s.user(caller.c.cred.UID).slots--
		s.userDone(caller.c.cred.UID)
	}
}

// checkFiles: fds only to an endpoint that takes them, a memfd sealed and
// sized as the MEMFD field says.
func (s *masterState) checkFiles(f *Frame, files []*os.File, to *mconn) (Code, uint32, string) {
	mv, hasMemfd := f.Field(FieldMemfd)
	if len(files) > 0 && to.hello&HelloAcceptFDs == 0 && !(hasMemfd && len(files) == 1) {
		return CodeFdsRefused, 0, "the receiver does not accept fds"
	}
	if !hasMemfd {
		return 0, 0, ""
	}
	if to.hello&HelloAcceptMemfd == 0 {
		return CodeFdsRefused, 0, "the receiver does not accept memfd payloads"
	}
	mf, err := ParseMemfd(mv)
	if err != nil || len(files) == 0 {
		return CodeBadMemfd, 0, "MEMFD field without its memfd"
	}
	if text := checkMemfd(files[len(files)-1], mf.Size, s.welcome.MaxMemfd); text != "" {
		return CodeBadMemfd, 0, text
	}
	return 0, 0, ""
}

// checkMemfd checks a payload memfd: all four seals, size as announced
// and within the bus's maximum. "" when it passes.
func checkMemfd(f *os.File, size, max uint64) string {
	rc, err := f.SyscallConn()
	if err != nil {
		return err.Error()
	}
	var seals int
	var st unix.Stat_t
	var serr, ferr error
	rc.Control(func(fd uintptr) {
		seals, serr = unix.FcntlInt(fd, unix.F_GET_SEALS, 0)
		ferr = unix.Fstat(int(fd), &st)
	})
	const want = unix.F_SEAL_WRITE | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL
	switch {
	case serr != nil:
		return "the payload fd is not a sealable memfd: " + serr.Error()
	case seals&want != want:
		return "the payload memfd lacks seals (has " + strconv.FormatInt(int64(seals), 16) + ", needs WRITE, SHRINK, GROW and SEAL)"
	case ferr != nil:
		return "fstat: " + ferr.Error()
	case uint64(st.Size) != size:
		return "the payload memfd has " + strconv.FormatInt(st.Size, 10) + " bytes, the MEMFD field says " + utoa(size)
	case size > max:
		return "the payload is above max_memfd (" + utoa(max) + " bytes)"
	}
	return ""
}

// multicast publishes an endpoint's signal to every endpoint whose
// matches select it and that the policy lets the sender reach.
func (s *masterState) multicast(c *mconn, src *maddr, f *Frame, files []*os.File) {
	sig, err := SignalOf(f)
	if err != nil {
		closeAll(files)
		s.fail(c, f.Serial, f.Source, codeOr(err, CodeInvalid), 0, errText(err))
		return
	}
	got, _ := f.Field(FieldBloom)
	if !bytes.Equal(got, c.bloomOf(s.bloom, sig)) {
		closeAll(files)
		s.fail(c, f.Serial, f.Source, CodeBadBloom, 0, "BLOOM is not the bloom of the signal's properties")
		return
	}
	f.SetField(FieldSenderCred, SenderCred{PID: uint32(c.cred.PID), UID: uint32(c.cred.UID), GID: uint32(c.cred.GID)}.Encode())
	b, err := f.AppendBinary(make([]byte, 0, f.Size()))
	if err != nil {
		closeAll(files)
		s.fail(c, f.Serial, f.Source, CodeInternal, 0, "encoding: "+err.Error())
		return
	}
	// Per delivery only what depends on the receiver: the frame is
	// encoded once (and once as a D-Bus message, for D-Bus receivers)
	// and its properties looked up once.
	var db []byte
	bloom, _ := f.Field(FieldBloom)
	_, hasMemfd := f.Field(FieldMemfd)
	check := len(files) > 0 || hasMemfd
	s.published = true
	s.watchers.each(sig, func(w *mconn) {
		if w.dead || !s.selects(w, src.addr, bloom, sig) {
			return
		}
		if d := s.talk(c, src.addr, "", w.primary); !d.Allow {
			return
		}
		if check {
			if code, _, _ := s.checkFiles(f, files, w); code != 0 {
				return
			}
		}
		if w.d == nil && len(b) > int(s.welcome.MaxFrame) {
			w.lost++ // a D-Bus sender's signal, larger than a native endpoint takes
			return
		}
		ob, isD := b, false
		if w.d != nil {
			if db == nil {
				var err error
				if db, err = dbusEncodeFrom(c, f); err != nil {
					return
				}
			}
			ob, isD = db, true
		}
		if !s.room(w, len(ob), c) {
			w.lost++
			return
		}
		dups, ok := dupAll(files)
		if !ok {
			w.lost++
			return
		}
		s.send(w, outFrame{b: ob, dbus: isD, files: dups, from: c, data: true, serial: f.Serial, source: f.Source})
	})
	closeAll(files)
}

// bloomOf is SignalBloom(p, sig), remembered for the endpoint's last
// signal: a publisher tends to send the same properties again, and
// hashing them was a tenth of the master's time per signal.
func (c *mconn) bloomOf(p Bloom, sig Signal) []byte {
	l := &c.lastSig
	if c.lastBloom != nil && sig.Path == l.Path && sig.Interface == l.Interface &&
		sig.Member == l.Member && slices.Equal(sig.Args, l.Args) {
		return c.lastBloom
	}
	c.lastBloom = SignalBloom(p, sig)
	c.lastSig = Signal{Path: sig.Path, Interface: sig.Interface, Member: sig.Member, Args: slices.Clone(sig.Args)}
	return c.lastBloom
}

func dupAll(files []*os.File) ([]*os.File, bool) {
	if len(files) == 0 {
		return nil, true
	}
	out := make([]*os.File, 0, len(files))
	for _, f := range files {
		var nfd int
		var err error
		rc, rerr := f.SyscallConn()
		if rerr == nil {
			rerr = rc.Control(func(fd uintptr) { nfd, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) })
		}
		if rerr != nil || err != nil {
			closeAll(out)
			return nil, false
		}
		out = append(out, os.NewFile(uintptr(nfd), f.Name()))
	}
	return out, true
}

// publish sends a bus signal (built with serial 0) to every endpoint whose
// matches select it, except those in told (who had it unicast already).
func (s *masterState) publish(fr *Frame, told map[*mconn]bool) {
	if s.watchers.empty() && !s.monitoring() {
		return
	}
	sig, err := SignalOf(fr)
	if err != nil {
		s.m.logf("bus: internal: bus signal: %v", err)
		return
	}
	if s.monitoring() {
		// One copy for all the watchers' deliveries, each of which gets
		// its connection's serial; the copy's serial counts the bus's
		// published signals (never 0).
		s.mon.published++
		fr.Destination, fr.Serial = AddrNone, s.mon.published
		s.copyFrame(fr, AddrBus, AddrNone, 0, 0)
	}
	s.noCopy = true
	defer func() { s.noCopy = false }()
	bloom, _ := fr.Field(FieldBloom)
	s.watchers.each(sig, func(w *mconn) {
		if w.dead || told[w] || s.dbusOnly && w.d == nil || !s.selects(w, AddrBus, bloom, sig) {
			return
		}
		if !s.room(w, fr.Size(), nil) {
			w.lost++
			return
		}
		fr.Destination = AddrNone
		s.sendFrame(w, fr)
	})
}

// selects reports whether one of w's matches selects the signal sig with
// that bloom from address from ("Delivery, exactly").
func (s *masterState) selects(w *mconn, from uint64, bloom []byte, sig Signal) bool {
	for _, m := range w.mlist {
		if m.Sender != AddrNone && m.Sender != from {
			continue
		}
		if !Contains(bloom, m.Bloom) {
			continue
		}
		if s.rulesHold(m.Rules, from, sig) {
			return true
		}
	}
	return false
}

func (s *masterState) rulesHold(rules []Rule, from uint64, sig Signal) bool {
	for _, r := range rules {
		if !s.ruleHolds(r, from, sig) {
			return false
		}
	}
	return true
}

func (s *masterState) ruleHolds(r Rule, from uint64, sig Signal) bool {
	arg := func(i uint8) (string, bool) {
		for _, a := range sig.Args {
			if a.Index == i {
				return a.Value, true
			}
		}
		return "", false
	}
	switch r.Kind {
	case RulePath:
		return sig.Path == r.Value
	case RulePathNamespace:
		return r.Value == "/" || sig.Path == r.Value || strings.HasPrefix(sig.Path, r.Value+"/")
	case RuleInterface:
		return sig.Interface == r.Value
	case RuleMember:
		return sig.Member == r.Value
	case RuleArg:
		v, ok := arg(r.Index)
		return ok && v == r.Value
	case RuleArgPath:
		v, ok := arg(r.Index)
		return ok && (v == r.Value ||
			strings.HasSuffix(v, "/") && strings.HasPrefix(r.Value, v) ||
			strings.HasSuffix(r.Value, "/") && strings.HasPrefix(v, r.Value))
	case RuleArg0Namespace:
		v, ok := arg(0)
		return ok && (v == r.Value || strings.HasPrefix(v, r.Value+"."))
	case RuleSenderName:
		n := s.names[r.Value]
		return n != nil && n.owner.addr == from
	}
	return false
}

// removeAddr takes an address off the bus: its names are handed over,
// routed calls toward it fail with PEER_GONE, its channels end (REVOKE
// GONE when the endpoint lives on, EndpointGone to the peers when it went),
// and EndpointGone is published.
func (s *masterState) removeAddr(a *maddr, reason uint32) {
	s.dropNames(a)
	s.failSlotsTo(a)
	// Calls this address made and still awaits: forget their slots.
	for k := range a.slotsOut {
		s.closeSlot(k)
	}
	var told map[*mconn]bool
	for _, ch := range a.chans {
		peer := ch.init
		if peer == a {
			peer = ch.acc
		}
		if reason == GoneRemoved {
			s.revoke(ch, RevokeGone)
			continue
		}
		s.leaveChan(ch, a)
		if peer != a && !peer.c.dead && peer.chans[ch.id] != nil && !told[peer.c] {
			if gone, err := EndpointGone(s.bloom, 0, peer.addr, a.addr, reason); err == nil {
				if told == nil {
					told = map[*mconn]bool{}
				}
				told[peer.c] = true
				s.sendFrame(peer.c, gone)
			}
		}
	}
	delete(s.addrs, a.addr)
	s.dbusUniqueChanged(a.addr, false)
	if s.watchers.empty() && !s.monitoring() {
		return // nobody to tell: spare building the notice
	}
	if g, err := EndpointGone(s.bloom, 0, 0, a.addr, reason); err == nil {
		s.publish(g, told)
	}
}

// failSlotsTo fails every routed call awaiting an answer from a: PEER_GONE
// to each caller, at once.
func (s *masterState) failSlotsTo(a *maddr) {
	for k := range a.slotsIn {
		caller := s.addrs[k.caller]
		s.closeSlot(k)
		if caller != nil && !caller.c.dead {
			s.fail(caller.c, k.serial, caller.addr, CodePeerGone, 0, FormatAddress(a.addr)+" went with the call pending")
		}
	}
}
