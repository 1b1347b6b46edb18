package bus

import (
	"os"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/porter-ipc/porter/fdpass"
)

// hello handles the first frame of a connection (docs/protocol-bus.md,
// "HELLO"): credentials against SO_PEERCRED, the policy, the quotas, then
// an address and WELCOME. Every refusal is fatal and uses no address.
func (s *masterState) hello(c *mconn, f *Frame, cred *fdpass.Cred) {
	refuse := func(code Code, text string) {
		s.fail(c, f.Serial, 0, code, 0, text)
		s.kill(c, GoneDied, "")
	}
	h, err := ParseHello(f.Body)
	if err != nil {
		refuse(codeOr(err, CodeInvalid), errText(err))
		return
	}
	if cred == nil {
		refuse(CodeCredMismatch, "HELLO must carry SCM_CREDENTIALS")
		return
	}
	if *cred != c.cred {
		s.m.logf("bus: refused a HELLO claiming pid %d uid %d gid %d on a connection made by pid %d uid %d gid %d",
			cred.PID, cred.UID, cred.GID, c.cred.PID, c.cred.UID, c.cred.GID)
		refuse(CodeCredMismatch, "the credentials sent (pid "+itoa(cred.PID)+", uid "+itoa(cred.UID)+", gid "+itoa(cred.GID)+
			") are not the connection's (pid "+itoa(c.cred.PID)+", uid "+itoa(c.cred.UID)+", gid "+itoa(c.cred.GID)+")")
		return
	}
	if d := s.m.policy(c.cred, Request{Op: OpJoin}); !d.Allow {
		refuse(CodeDenied, reasonOr(d, "the policy refused to let uid "+itoa(c.cred.UID)+" join"))
		return
	}
	if s.endpoints >= 65536 {
		refuse(CodeQuota, "the bus has 65,536 endpoints")
		return
	}
	if s.perUID[c.cred.UID] >= s.perUIDMax {
		refuse(CodeQuota, "uid "+itoa(c.cred.UID)+" has "+itoa(s.perUIDMax)+" endpoints on the bus")
		return
	}
	a := &maddr{addr: s.nextAddr, c: c}
	s.nextAddr++
	s.addrs[a.addr] = a
	c.primary, c.addrs = a, []*maddr{a}
	c.joined, c.hello, c.label = true, h.Flags, h.Label
	s.endpoints++
	s.perUID[c.cred.UID]++
	c.c.SetPassCred(false)

	w := s.welcome
	w.Address = a.addr
	w.PID, w.UID, w.GID = uint32(c.cred.PID), uint32(c.cred.UID), uint32(c.cred.GID)
	w.Flags = 0
	if h.Flags&HelloNoDirect == 0 {
		w.Flags |= WelcomeDirect
	}
	if h.Flags&HelloAcceptFDs != 0 {
		w.Flags |= WelcomeFDs
	}
	if h.Flags&HelloAcceptMemfd != 0 {
		w.Flags |= WelcomeMemfd
	}
	if s.monitoring() {
		w.Flags |= WelcomeMonitor
	}
	s.answer(c, TypeWelcome, f.Serial, w.Encode())
	s.dbusUniqueChanged(a.addr, true)
}

func codeOr(err error, def Code) Code {
	if c := CodeOf(err); c != 0 {
		return c
	}
	return def
}

func errText(err error) string {
	if e, ok := err.(*Error); ok {
		return e.Text
	}
	return err.Error()
}

func reasonOr(d Decision, def string) string {
	if d.Reason != "" {
		return d.Reason
	}
	return def
}

// request dispatches a control request of a joined endpoint.
func (s *masterState) request(c *mconn, f *Frame) {
	bad := func(err error) { s.fail(c, f.Serial, 0, codeOr(err, CodeInvalid), 0, errText(err)) }
	switch f.Type {
	case TypeBye:
		s.done(c, f.Serial, 0, 0)
		s.kill(c, GoneLeft, "")
	case TypeAddAddress:
		if len(c.addrs) >= int(s.welcome.MaxAddresses) {
			s.fail(c, f.Serial, 0, CodeQuota, 0, "max_addresses ("+itoa(int(s.welcome.MaxAddresses))+") reached")
			return
		}
		a := &maddr{addr: s.nextAddr, c: c}
		s.nextAddr++
		s.addrs[a.addr] = a
		c.addrs = append(c.addrs, a)
		s.done(c, f.Serial, a.addr, 0)
	case TypeRemoveAddress:
		v, err := ParseU64(f.Type, f.Body)
		if err != nil {
			bad(err)
			return
		}
		a := c.addrOf(v)
		switch {
		case a == nil:
			s.fail(c, f.Serial, 0, CodeNotFound, 0, FormatAddress(v)+" is not an address of this endpoint")
		case a == c.primary:
			s.fail(c, f.Serial, 0, CodeInvalid, 0, "the primary address cannot be removed")
		default:
			c.addrs = slices.DeleteFunc(c.addrs, func(x *maddr) bool { return x == a })
			s.removeAddr(a, GoneRemoved)
			s.done(c, f.Serial, 0, 0)
		}
	case TypeRequestName:
		s.requestName(c, f)
	case TypeReleaseName:
		s.releaseName(c, f)
	case TypeConnect:
		s.connect(c, f)
	case TypeDisconnect:
		v, err := ParseU64(f.Type, f.Body)
		if err != nil {
			bad(err)
			return
		}
		s.disconnect(c, f.Serial, v)
	case TypeAddMatch:
		s.addMatch(c, f)
	case TypeRemoveMatch:
		v, err := ParseU64(f.Type, f.Body)
		if err != nil {
			bad(err)
			return
		}
		if !s.removeMatch(c, v) {
			s.fail(c, f.Serial, 0, CodeNotFound, 0, "no match with cookie "+utoa(v))
			return
		}
		s.done(c, f.Serial, v, 0)
	case TypeResolve:
		r, err := ParseResolve(f.Body)
		if err != nil {
			bad(err)
			return
		}
		a, code, text := s.lookup(r.Address, r.Name)
		if a == nil {
			s.fail(c, f.Serial, 0, code, 0, text)
			return
		}
		s.answer(c, TypeIdentity, f.Serial, s.identity(a).Encode())
	case TypeList:
		keys := make([]uint64, 0, len(s.addrs))
		for k := range s.addrs {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			s.answer(c, TypeIdentity, f.Serial, s.identity(s.addrs[k]).Encode())
		}
		s.answer(c, TypeListEnd, f.Serial, U32Body(uint32(len(keys))))
	case TypeBecomeMonitor:
		s.becomeMonitor(c, f)
	default:
		s.fail(c, f.Serial, 0, CodeMalformed, 0, f.Type.String()+" is not a request")
		s.kill(c, GoneDied, "MALFORMED")
	}
}

func (c *mconn) addrOf(a uint64) *maddr {
	for _, x := range c.addrs {
		if x.addr == a {
			return x
		}
	}
	return nil
}

// ownAddr is c's address v, or nil after a FAIL NOT_FOUND for the
// request serial.
func (s *masterState) ownAddr(c *mconn, serial, v uint64) *maddr {
	a := c.addrOf(v)
	if a == nil {
		s.fail(c, serial, 0, CodeNotFound, 0, FormatAddress(v)+" is not an address of this endpoint")
	}
	return a
}

// lookup finds an address by number, or a name's owner.
func (s *masterState) lookup(addr uint64, name string) (*maddr, Code, string) {
	if name != "" {
		if n := s.names[name]; n != nil {
			return n.owner, 0, ""
		}
		return nil, CodeNameHasNoOwner, "nobody owns " + name
	}
	if a := s.addrs[addr]; a != nil && !a.c.monitor {
		return a, 0, ""
	}
	return nil, CodeUnknownAddress, "no endpoint has the address " + FormatAddress(addr)
}

func (s *masterState) identity(a *maddr) IdentityBody {
	c := a.c
	var fl uint16
	if c.monitor {
		fl |= IdentityMonitor
	}
	if c.hello&HelloAcceptFDs != 0 {
		fl |= IdentityFDs
	}
	if c.hello&HelloAcceptMemfd != 0 {
		fl |= IdentityMemfd
	}
	if c.hello&HelloNoDirect != 0 {
		fl |= IdentityNoDirect
	}
	return IdentityBody{Address: a.addr, Primary: c.primary.addr, PID: uint32(c.cred.PID), UID: uint32(c.cred.UID),
		GID: uint32(c.cred.GID), Flags: fl, Label: c.label, Owned: a.owned, Queued: a.queued}
}

// --- names ---

// nameRequest reads a REQUEST_NAME or RELEASE_NAME body and the address of
// c's it names; nil after a FAIL.
func (s *masterState) nameRequest(c *mconn, f *Frame) (NameBody, *maddr) {
	nb, err := ParseName(f.Type, f.Body)
	if err != nil {
		s.fail(c, f.Serial, 0, codeOr(err, CodeInvalid), 0, errText(err))
		return nb, nil
	}
	return nb, s.ownAddr(c, f.Serial, nb.Address)
}

func (s *masterState) requestName(c *mconn, f *Frame) {
	nb, a := s.nameRequest(c, f)
	if a == nil {
		return
	}
	if ReservedName(nb.Name) {
		s.fail(c, f.Serial, 0, CodeDenied, 0, nb.Name+" is reserved to the bus")
		return
	}
	if d := s.m.policy(c.cred, Request{Op: OpOwn, Source: a.addr, Name: nb.Name}); !d.Allow {
		s.fail(c, f.Serial, 0, CodeDenied, 0, reasonOr(d, "the policy refused "+nb.Name+" to uid "+itoa(c.cred.UID)))
		return
	}
	n := s.names[nb.Name]
	if n != nil && n.owner == a {
		n.ownerFlags = nb.Flags
		s.done(c, f.Serial, NameAlreadyOwner, 0)
		return
	}
	qi := -1
	if n != nil {
		qi = slices.IndexFunc(n.queue, func(w nameWait) bool { return w.a == a })
	}
	if qi < 0 && c.nnames >= int(s.welcome.MaxNames) {
		s.fail(c, f.Serial, 0, CodeQuota, 0, "max_names ("+itoa(int(s.welcome.MaxNames))+") reached")
		return
	}
	switch {
	case n == nil:
		n = &mname{name: nb.Name}
		s.names[nb.Name] = n
		c.nnames++
		s.done(c, f.Serial, NamePrimaryOwner, 0)
		s.setOwner(n, a, nb.Flags)
	case nb.Flags&NameReplaceExisting != 0 && n.ownerFlags&NameAllowReplacement != 0:
		if qi >= 0 {
			s.unqueue(n, qi)
		}
		c.nnames++ // counted as owner; unqueue took the queued count off
		old, oldFlags := n.owner, n.ownerFlags
		s.done(c, f.Serial, NamePrimaryOwner, 0)
		s.setOwner(n, a, nb.Flags)
		if oldFlags&NameDoNotQueue == 0 {
			n.queue = slices.Insert(n.queue, 0, nameWait{old, oldFlags})
			old.queued = append(old.queued, n.name)
		} else {
			old.c.nnames--
		}
	case nb.Flags&NameDoNotQueue != 0:
		if qi >= 0 {
			s.unqueue(n, qi)
		}
		s.done(c, f.Serial, NameExists, 0)
	default:
		if qi >= 0 {
			n.queue[qi].flags = nb.Flags
		} else {
			n.queue = append(n.queue, nameWait{a, nb.Flags})
			a.queued = append(a.queued, n.name)
			c.nnames++
		}
		s.done(c, f.Serial, NameInQueue, 0)
	}
}

func (s *masterState) releaseName(c *mconn, f *Frame) {
	nb, a := s.nameRequest(c, f)
	if a == nil {
		return
	}
	n := s.names[nb.Name]
	switch {
	case n == nil:
		s.done(c, f.Serial, NameNonExistent, 0)
	case n.owner == a:
		s.done(c, f.Serial, NameReleased, 0)
		s.dropOwner(n)
	default:
		if qi := slices.IndexFunc(n.queue, func(w nameWait) bool { return w.a == a }); qi >= 0 {
			s.unqueue(n, qi)
			s.done(c, f.Serial, NameReleased, 0)
			return
		}
		s.done(c, f.Serial, NameNotOwner, 0)
	}
}

// dropNames hands over every name a owns and takes it off every queue.
func (s *masterState) dropNames(a *maddr) {
	for len(a.owned) > 0 {
		s.dropOwner(s.names[a.owned[0]])
	}
	for len(a.queued) > 0 {
		n := s.names[a.queued[0]]
		for i, w := range n.queue {
			if w.a == a {
				s.unqueue(n, i)
				break
			}
		}
	}
}

// unqueue takes waiter i off n's queue.
func (s *masterState) unqueue(n *mname, i int) {
	w := n.queue[i]
	n.queue = slices.Delete(n.queue, i, i+1)
	w.a.queued = removeString(w.a.queued, n.name)
	w.a.c.nnames--
}

// dropOwner takes n from its owner, who releases it or goes: the first
// waiter gets it, or the name disappears.
func (s *masterState) dropOwner(n *mname) {
	n.owner.c.nnames--
	if len(n.queue) > 0 {
		w := n.queue[0]
		n.queue = slices.Delete(n.queue, 0, 1)
		w.a.queued = removeString(w.a.queued, n.name)
		s.setOwner(n, w.a, w.flags)
		return
	}
	s.setOwner(n, nil, 0)
}

// setOwner moves n to next (nil: the name disappears) and tells, in this
// order, the old owner (if still connected), the new one and the
// watchers; then re-judges the channels of both, since a policy may judge
// by names.
func (s *masterState) setOwner(n *mname, next *maddr, flags uint32) {
	old := n.owner
	if old != nil {
		old.owned = removeString(old.owned, n.name)
	}
	n.owner, n.ownerFlags = next, flags
	if next != nil {
		next.owned = append(next.owned, n.name)
	} else {
		delete(s.names, n.name)
	}
	s.epoch++
	var oldAddr, newAddr uint64
	if old != nil {
		oldAddr = old.addr
		if !old.c.dead && s.addrs[old.addr] == old {
			if fr, err := NameLost(0, n.name, old.addr); err == nil {
				s.sendFrame(old.c, fr)
			}
		}
	}
	if next != nil {
		newAddr = next.addr
		if fr, err := NameAcquired(0, n.name, next.addr); err == nil {
			s.sendFrame(next.c, fr)
		}
	}
	if fr, err := NameOwnerChanged(s.bloom, 0, n.name, oldAddr, newAddr); err == nil {
		s.publish(fr, nil)
	}
	if old != nil && s.addrs[old.addr] == old {
		s.recheck(old)
	}
	if next != nil {
		s.recheck(next)
	}
}

func removeString(l []string, v string) []string {
	if i := slices.Index(l, v); i >= 0 {
		l = slices.Delete(l, i, i+1)
	}
	if len(l) == 0 {
		return nil
	}
	return l
}

// --- channels ---

func (s *masterState) connect(c *mconn, f *Frame) {
	cb, err := ParseConnect(f.Body)
	if err != nil {
		s.fail(c, f.Serial, 0, codeOr(err, CodeInvalid), 0, errText(err))
		return
	}
	src := c.addrOf(cb.Source)
	if src == nil {
		s.fail(c, f.Serial, 0, CodeBadSource, 0, FormatAddress(cb.Source)+" is not an address of this endpoint")
		return
	}
	dst, code, text := s.lookup(cb.Destination, cb.Name)
	if dst == nil {
		s.fail(c, f.Serial, 0, code, 0, text)
		return
	}
	if d := s.talk(c, src.addr, cb.Name, dst); !d.Allow {
		s.fail(c, f.Serial, 0, CodeDenied, 0, reasonOr(d, "the policy refused "+FormatAddress(src.addr)+" → "+FormatAddress(dst.addr)))
		return
	}
	reason := uint8(RoutedNone)
	switch {
	case dst.c.hello&HelloNoDirect != 0 || c.hello&HelloNoDirect != 0:
		reason = RoutedNoDirect
	case cb.Flags&ConnectRouted != 0:
		reason = RoutedAsked
	case s.monitoring():
		reason = RoutedMonitor
	case c.nchans >= int(s.welcome.MaxChannels) || dst.c.nchans >= int(s.welcome.MaxChannels):
		reason = RoutedNoBudget
	}
	mine := IntroduceBody{Local: src.addr, Peer: dst.addr, PID: uint32(dst.c.cred.PID), UID: uint32(dst.c.cred.UID),
		GID: uint32(dst.c.cred.GID), Mode: ModeRouted, Role: RoleInitiator, PeerAccepts: accepts(dst.c),
		RoutedReason: reason, Names: dst.owned}
	if reason != RoutedNone {
		s.answer(c, TypeIntroduce, f.Serial, mine.Encode())
		return
	}
	// Blocking ends, so that os.NewFile leaves them to us rather than to
	// Go's netpoller; O_NONBLOCK is then set on both descriptions, which
	// the endpoints receive as they are.
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		code := CodeInternal
		if err == unix.EMFILE || err == unix.ENFILE {
			code = CodeFDLimit
		}
		s.fail(c, f.Serial, 0, code, uint32(errnoIn(err, unix.EIO)), "socketpair: "+err.Error())
		return
	}
	unix.SetNonblock(fds[0], true)
	unix.SetNonblock(fds[1], true)
	fa, fi := os.NewFile(uintptr(fds[0]), "bus-channel"), os.NewFile(uintptr(fds[1]), "bus-channel")
	ch := &mchan{id: s.nextChan, init: src, acc: dst}
	s.nextChan++
	s.chans[ch.id] = ch
	src.addChan(ch)
	dst.addChan(ch)
	c.nchans++
	dst.c.nchans++
	theirs := IntroduceBody{Channel: ch.id, Local: dst.addr, Peer: src.addr, PID: uint32(c.cred.PID), UID: uint32(c.cred.UID),
		GID: uint32(c.cred.GID), Mode: ModeDirect, Role: RoleAcceptor, PeerAccepts: accepts(c), Names: src.owned}
	mine.Channel, mine.Mode = ch.id, ModeDirect
	s.sendFrame(dst.c, &Frame{Type: TypeIntroduce, Destination: dst.addr, NFDs: 1, Body: theirs.Encode()}, fa)
	s.answer(c, TypeIntroduce, f.Serial, mine.Encode(), fi)
}

func accepts(c *mconn) uint8 {
	var a uint8
	if c.hello&HelloAcceptFDs != 0 {
		a |= PeerAcceptsFDs
	}
	if c.hello&HelloAcceptMemfd != 0 {
		a |= PeerAcceptsMemfd
	}
	return a
}

func (a *maddr) addChan(ch *mchan) {
	if a.chans == nil {
		a.chans = map[uint64]*mchan{}
	}
	a.chans[ch.id] = ch
}

// disconnect: one side of a channel says it closed its end. The master
// forgets the channel once both sides did (or are gone).
func (s *masterState) disconnect(c *mconn, serial, id uint64) {
	ch := s.chans[id]
	var side *maddr
	switch {
	case ch == nil:
	case ch.init.c == c && ch.init.chans[id] != nil:
		side = ch.init
	case ch.acc.c == c && ch.acc.chans[id] != nil:
		side = ch.acc
	}
	if side == nil {
		s.fail(c, serial, 0, CodeNotFound, 0, "no channel "+utoa(id)+" of this endpoint")
		return
	}
	s.leaveChan(ch, side)
	s.done(c, serial, 0, 0)
}

// leaveChan removes one side of ch; the channel is forgotten when no side
// is left.
func (s *masterState) leaveChan(ch *mchan, side *maddr) {
	if side.chans[ch.id] == nil {
		return
	}
	delete(side.chans, ch.id)
	side.c.nchans--
	if ch.init.chans[ch.id] == nil && ch.acc.chans[ch.id] == nil {
		delete(s.chans, ch.id)
	}
}

// revoke ends a channel from the master's side: REVOKE to both sides
// still on it, and the channel is forgotten.
func (s *masterState) revoke(ch *mchan, reason uint8) {
	for _, side := range []*maddr{ch.init, ch.acc} {
		if side.chans[ch.id] == nil {
			continue
		}
		s.leaveChan(ch, side)
		if !side.c.dead {
			s.sendFrame(side.c, &Frame{Type: TypeRevoke, Destination: side.addr, Body: RevokeBody{Channel: ch.id, Reason: reason}.Encode()})
		}
	}
	delete(s.chans, ch.id)
}

// recheck judges again the channels a is a side of, after a name change.
func (s *masterState) recheck(a *maddr) {
	for _, ch := range a.chans {
		if s.chans[ch.id] == nil || ch.init.c.dead || ch.acc.c.dead {
			continue
		}
		if d := s.talk(ch.init.c, ch.init.addr, "", ch.acc); !d.Allow {
			s.revoke(ch, RevokePolicy)
		}
	}
}

// revalidateAll forgets every cached decision and re-judges every channel.
func (s *masterState) revalidateAll() {
	s.epoch++
	for _, ch := range s.chans {
		if ch.init.c.dead || ch.acc.c.dead {
			continue
		}
		if d := s.talk(ch.init.c, ch.init.addr, "", ch.acc); !d.Allow {
			s.revoke(ch, RevokePolicy)
		}
	}
}

type talkKey struct {
	to   *mconn
	name string
}

// talk is the OpTalk decision from c's address src to dst, cached per
// (receiver endpoint, name used) until the epoch moves.
func (s *masterState) talk(c *mconn, src uint64, name string, dst *maddr) Decision {
	if e, ok := c.talk[talkKey{dst.c, name}]; ok && e.epoch == s.epoch {
		return e.d
	}
	d := s.m.policy(c.cred, Request{Op: OpTalk, Source: src, Name: name,
		Peer: &Peer{Address: dst.addr, Cred: dst.c.cred, Names: slices.Clone(dst.owned)}})
	if c.talk == nil || len(c.talk) >= 1024 {
		c.talk = map[talkKey]talkEntry{}
	}
	c.talk[talkKey{dst.c, name}] = talkEntry{s.epoch, d}
	return d
}

// --- matches ---

func (s *masterState) addMatch(c *mconn, f *Frame) {
	mb, err := ParseAddMatch(s.bloom, f.Body)
	if err != nil {
		s.fail(c, f.Serial, 0, codeOr(err, CodeInvalid), 0, errText(err))
		return
	}
	if mb.Cookie == 0 {
		s.fail(c, f.Serial, 0, CodeInvalid, 0, "a match's cookie must be nonzero")
		return
	}
	if _, dup := c.matches[mb.Cookie]; dup {
		s.fail(c, f.Serial, 0, CodeInvalid, 0, "cookie "+utoa(mb.Cookie)+" is in use")
		return
	}
	if len(c.matches) >= int(s.welcome.MaxMatches) {
		s.fail(c, f.Serial, 0, CodeQuota, 0, "max_matches ("+itoa(int(s.welcome.MaxMatches))+") reached")
		return
	}
	if u := s.users[c.cred.UID]; u != nil && u.matches >= s.userMax.matches {
		s.fail(c, f.Serial, 0, CodeQuota, 0, "uid "+itoa(c.cred.UID)+" has "+itoa(u.matches)+" matches on the bus")
		return
	}
	if d := s.m.policy(c.cred, Request{Op: OpMatch, Match: &mb}); !d.Allow {
		s.fail(c, f.Serial, 0, CodeDenied, 0, reasonOr(d, "the policy refused the match"))
		return
	}
	mb.Bloom = slices.Clone(mb.Bloom)
	for i := range mb.Rules {
		mb.Rules[i].Value = cloneString(mb.Rules[i].Value)
	}
	if c.matches == nil {
		c.matches = map[uint64]*AddMatchBody{}
	}
	c.matches[mb.Cookie] = &mb
	s.watchers.add(c, &mb)
	s.user(c.cred.UID).matches++
	s.done(c, f.Serial, mb.Cookie, 0)
}

// removeMatch drops c's match with cookie v; false if it has none.
func (s *masterState) removeMatch(c *mconn, v uint64) bool {
	m := c.matches[v]
	if m == nil {
		return false
	}
	s.watchers.remove(c, m)
	delete(c.matches, v)
	if len(c.matches) == 0 {
		c.matches = nil
	}
	s.user(c.cred.UID).matches--
	s.userDone(c.cred.UID)
	return true
}

// dropMatches drops every match of c.
func (s *masterState) dropMatches(c *mconn) {
	s.watchers.removeAll(c)
	if len(c.matches) > 0 {
		s.user(c.cred.UID).matches -= len(c.matches)
		s.userDone(c.cred.UID)
	}
	c.matches = nil
}

func cloneString(v string) string { return string([]byte(v)) }
