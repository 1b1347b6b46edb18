package bus

import (
	"encoding/hex"
	"os"
	"slices"
	"strings"

	"github.com/porter-ipc/porter/internal/dbuswire"
)

// The driver, org.freedesktop.DBus (docs/dbus.md, "The driver"). Methods
// that change the bus (RequestName, ReleaseName, AddMatch, BecomeMonitor,
// Hello) go through the master's native requests, so that D-Bus and
// native endpoints share one set of rules; their native answer (DONE,
// FAIL, WELCOME) is translated against the driver call waiting for it.

// driverCall is a driver method waiting for the native answer to the
// request it made.
type driverCall struct {
	h *dbuswire.Header
	// ok turns a DONE (or WELCOME) into the method's return: its
	// signature and body.
	ok func(f *Frame) (string, []byte)
	// errName, when set, names the D-Bus error for a native code.
	errName func(Code) string
}

// answer translates the native answer f to the driver call.
func (d *driverCall) answer(s *masterState, c *mconn, f *Frame) ([]byte, error) {
	if f.Type == TypeFail {
		fb, err := ParseFail(f.Body)
		if err != nil {
			return nil, err
		}
		name := ""
		if d.errName != nil {
			name = d.errName(fb.Code)
		}
		if name == "" {
			name = dbusErrorName(fb.Code, 0)
		}
		if d.h.Flags&dbuswire.FlagNoReplyExpected != 0 {
			return nil, nil
		}
		return s.dbusCopied(s.dbusErrorBytes(c, d.h.Serial, name, fb.Text)), nil
	}
	sig, body := "", []byte(nil)
	if d.ok != nil {
		sig, body = d.ok(f)
	}
	if d.h.Flags&dbuswire.FlagNoReplyExpected != 0 {
		return nil, nil
	}
	return s.dbusCopied(s.dbusReplyBytes(c, d.h, sig, body)), nil
}

// nativeRequest makes the native request f for the D-Bus call h, with dc
// waiting for its answer.
func (s *masterState) nativeRequest(c *mconn, h *dbuswire.Header, f *Frame, dc *driverCall, do func(*mconn, *Frame)) {
	dc.h = h
	f.Serial = uint64(h.Serial)
	if c.primary != nil {
		f.Source = c.primary.addr
	}
	f.Destination = AddrBus
	if c.d.pending == nil {
		c.d.pending = map[uint64]*driverCall{}
	}
	c.d.pending[f.Serial] = dc
	do(c, f)
}

// dbusReplyBytes is the bus's method return to the call h.
func (s *masterState) dbusReplyBytes(c *mconn, h *dbuswire.Header, sig string, body []byte) []byte {
	return s.dbusFromBus(c, &dbuswire.Header{Type: dbuswire.TypeMethodReturn, ReplySerial: h.Serial, Signature: sig}, body, false)
}

// driverReply answers the driver call h at once.
func (s *masterState) driverReply(c *mconn, h *dbuswire.Header, sig string, body []byte) {
	if h.Flags&dbuswire.FlagNoReplyExpected != 0 {
		return
	}
	s.send(c, outFrame{b: s.dbusCopied(s.dbusReplyBytes(c, h, sig, body)), dbus: true})
}

// dbusHello handles the first message of a D-Bus connection: it must be
// Hello, which is the native HELLO (docs/dbus.md, "Hello").
func (s *masterState) dbusHello(c *mconn, h *dbuswire.Header) {
	if h.Type != dbuswire.TypeMethodCall || h.Destination != DriverName || h.Member != "Hello" ||
		h.Interface != "" && h.Interface != DriverName {
		s.m.logf("bus: D-Bus connection of pid %d uid %d: the first message is a %s, not Hello: ignoring it and what follows",
			c.cred.PID, c.cred.UID, dbusTypeName(h.Type))
		c.d.refused = 0
		return
	}
	flags := uint32(HelloNoDirect)
	if c.d.fds {
		flags |= HelloAcceptFDs
	}
	f := &Frame{Type: TypeHello, Body: HelloBody{Flags: flags, Label: "dbus"}.Encode()}
	dc := &driverCall{ok: func(*Frame) (string, []byte) {
		e := dbuswire.NewEncoder('l')
		e.String(FormatAddress(c.primary.addr))
		return "s", e.Bytes()
	}, errName: func(code Code) string {
		if code == CodeQuota {
			return dbusLimitsExceeded
		}
		return ""
	}}
	s.nativeRequest(c, h, f, dc, func(c *mconn, f *Frame) { s.hello(c, f, &c.cred) })
	if c.joined && !c.dead {
		if fr, err := NameAcquired(0, FormatAddress(c.primary.addr), c.primary.addr); err == nil {
			s.sendFrame(c, fr)
		}
	}
}

// driver handles a message to org.freedesktop.DBus.
func (s *masterState) driver(c *mconn, h *dbuswire.Header, body []byte) {
	if h.Type != dbuswire.TypeMethodCall {
		return // signals and replies to the bus: nothing to do
	}
	wrong := func(want string) bool {
		if h.Signature == want {
			return false
		}
		s.dbusError(c, h, dbusInvalidArgs, "Call to "+h.Member+" has wrong args ("+h.Signature+", expected "+want+")")
		return true
	}
	args := func(want string) (*dbuswire.Decoder, bool) {
		if wrong(want) {
			return nil, false
		}
		return dbuswire.NewDecoder(h.Order, h.Signature, body), true
	}
	oneString := func() (string, bool) {
		d, ok := args("s")
		if !ok {
			return "", false
		}
		v, err := d.String()
		if err == nil {
			err = d.Done()
		}
		if err != nil {
			s.dbusError(c, h, dbusInvalidArgs, err.Error())
			return "", false
		}
		return v, true
	}
	reply := func(sig string, fill func(e *dbuswire.Encoder)) {
		e := dbuswire.NewEncoder('l')
		if fill != nil {
			fill(e)
		}
		s.driverReply(c, h, sig, e.Bytes())
	}

	switch h.Interface {
	case "", DriverName:
	case "org.freedesktop.DBus.Peer":
		switch h.Member {
		case "Ping":
			reply("", nil)
		case "GetMachineId":
			id, err := os.ReadFile("/etc/machine-id")
			if err != nil {
				s.dbusError(c, h, dbusFailed, "no machine id: "+err.Error())
				return
			}
			reply("s", func(e *dbuswire.Encoder) { e.String(strings.TrimSpace(string(id))) })
		default:
			s.dbusError(c, h, dbusUnknownMethod, "No such method "+h.Member+" on org.freedesktop.DBus.Peer")
		}
		return
	case "org.freedesktop.DBus.Introspectable":
		if h.Member != "Introspect" {
			s.dbusError(c, h, dbusUnknownMethod, "No such method "+h.Member)
			return
		}
		reply("s", func(e *dbuswire.Encoder) { e.String(driverIntrospection) })
		return
	case "org.freedesktop.DBus.Properties":
		s.driverProperties(c, h, body)
		return
	case "org.freedesktop.DBus.Monitoring":
		if h.Member != "BecomeMonitor" {
			s.dbusError(c, h, dbusUnknownMethod, "No such method "+h.Member+" on org.freedesktop.DBus.Monitoring")
			return
		}
		s.driverBecomeMonitor(c, h, body)
		return
	default:
		s.dbusError(c, h, dbusUnknownInterface, "org.freedesktop.DBus does not understand interface "+h.Interface)
		return
	}

	switch h.Member {
	case "Hello":
		s.dbusError(c, h, dbusFailed, "Already handled an Hello message")
	case "RequestName":
		d, ok := args("su")
		if !ok {
			return
		}
		name, err := d.String()
		flags, err2 := d.Uint32()
		if err == nil {
			err = err2
		}
		if err != nil {
			s.dbusError(c, h, dbusInvalidArgs, err.Error())
			return
		}
		switch {
		case strings.HasPrefix(name, ":"):
			s.dbusError(c, h, dbusInvalidArgs, "Cannot acquire a service starting with ':' such as \""+name+"\"")
			return
		case name == DriverName:
			s.dbusError(c, h, dbusInvalidArgs, "Connection is not allowed to own the service \""+name+"\" because it is reserved for D-Bus' use only")
			return
		case !dbuswire.ValidBusName(name):
			s.dbusError(c, h, dbusInvalidArgs, "Requested bus name \""+name+"\" is not valid")
			return
		}
		f := &Frame{Type: TypeRequestName, Body: NameBody{Address: c.primary.addr, Flags: flags & 7, Name: name}.Encode()}
		s.nativeRequest(c, h, f, &driverCall{ok: doneU32}, s.requestName)
	case "ReleaseName":
		name, ok := oneString()
		if !ok {
			return
		}
		if strings.HasPrefix(name, ":") || name == DriverName || !dbuswire.ValidBusName(name) {
			s.dbusError(c, h, dbusInvalidArgs, "Cannot release the name \""+name+"\"")
			return
		}
		f := &Frame{Type: TypeReleaseName, Body: NameBody{Address: c.primary.addr, Name: name}.Encode()}
		s.nativeRequest(c, h, f, &driverCall{ok: doneU32}, s.releaseName)
	case "ListNames":
		if wrong("") {
			return
		}
		reply("as", func(e *dbuswire.Encoder) { e.Strings(s.dbusNames()) })
	case "ListActivatableNames":
		if wrong("") {
			return
		}
		reply("as", func(e *dbuswire.Encoder) { e.Strings([]string{DriverName}) })
	case "NameHasOwner":
		name, ok := oneString()
		if !ok {
			return
		}
		owned := name == DriverName || s.dbusOwner(name) != nil
		reply("b", func(e *dbuswire.Encoder) { e.Bool(owned) })
	case "GetNameOwner":
		name, ok := oneString()
		if !ok {
			return
		}
		owner := DriverName
		if name != DriverName {
			a := s.dbusOwner(name)
			if a == nil {
				s.dbusError(c, h, dbusNameHasNoOwner, "Could not get owner of name '"+name+"': no such name")
				return
			}
			owner = FormatAddress(a.addr)
		}
		reply("s", func(e *dbuswire.Encoder) { e.String(owner) })
	case "ListQueuedOwners":
		name, ok := oneString()
		if !ok {
			return
		}
		n := s.names[name]
		if n == nil {
			s.dbusError(c, h, dbusNameHasNoOwner, "Could not get owners of name '"+name+"': no such name")
			return
		}
		owners := []string{FormatAddress(n.owner.addr)}
		for _, w := range n.queue {
			owners = append(owners, FormatAddress(w.a.addr))
		}
		reply("as", func(e *dbuswire.Encoder) { e.Strings(owners) })
	case "StartServiceByName":
		d, ok := args("su")
		if !ok {
			return
		}
		name, err := d.String()
		if err != nil {
			s.dbusError(c, h, dbusInvalidArgs, err.Error())
			return
		}
		if name != DriverName && s.dbusOwner(name) == nil {
			s.dbusError(c, h, dbusServiceUnknown, "The name "+name+" was not provided by any .service files")
			return
		}
		reply("u", func(e *dbuswire.Encoder) { e.Uint32(2) }) // DBUS_START_REPLY_ALREADY_RUNNING
	case "UpdateActivationEnvironment":
		s.dbusError(c, h, dbusAccessDenied, "porter's bus has no activation")
	case "AddMatch":
		text, ok := oneString()
		if !ok {
			return
		}
		s.driverAddMatch(c, h, text)
	case "RemoveMatch":
		text, ok := oneString()
		if !ok {
			return
		}
		s.driverRemoveMatch(c, h, text)
	case "GetConnectionUnixUser", "GetConnectionUnixProcessID", "GetConnectionCredentials",
		"GetAdtAuditSessionData", "GetConnectionSELinuxSecurityContext":
		name, ok := oneString()
		if !ok {
			return
		}
		s.driverCredentials(c, h, name)
	case "GetId":
		if wrong("") {
			return
		}
		reply("s", func(e *dbuswire.Encoder) { e.String(hex.EncodeToString(s.welcome.BusID[:])) })
	case "ReloadConfig":
		reply("", nil)
	default:
		s.dbusError(c, h, dbusUnknownMethod, "org.freedesktop.DBus does not understand message "+h.Member)
	}
}

// doneU32 is the return of RequestName and ReleaseName: DONE's value as
// D-Bus's u (the numbers are D-Bus's).
func doneU32(f *Frame) (string, []byte) {
	d, _ := ParseDone(f.Body)
	e := dbuswire.NewEncoder('l')
	e.Uint32(uint32(d.Value))
	return "u", e.Bytes()
}

// dbusOwner is the address behind a D-Bus name: a unique name's own, or a
// well-known name's owner; nil when there is none.
func (s *masterState) dbusOwner(name string) *maddr {
	if strings.HasPrefix(name, ":") {
		v, err := ParseAddress(name)
		if err != nil {
			return nil
		}
		if a := s.addrs[v]; a != nil && !a.c.monitor {
			return a
		}
		return nil
	}
	if n := s.names[name]; n != nil {
		return n.owner
	}
	return nil
}

// dbusNames is ListNames: the bus, every well-known name, every unique
// name, sorted.
func (s *masterState) dbusNames() []string {
	names := make([]string, 0, 1+len(s.names)+len(s.addrs))
	for n := range s.names {
		names = append(names, n)
	}
	slices.Sort(names)
	addrs := make([]uint64, 0, len(s.addrs))
	for a, x := range s.addrs {
		if !x.c.monitor {
			addrs = append(addrs, a)
		}
	}
	slices.Sort(addrs)
	out := append([]string{DriverName}, names...)
	for _, a := range addrs {
		out = append(out, FormatAddress(a))
	}
	return out
}

func (s *masterState) driverCredentials(c *mconn, h *dbuswire.Header, name string) {
	var uid, pid, gid uint32
	if name == DriverName {
		uid, pid, gid = uint32(os.Geteuid()), uint32(os.Getpid()), uint32(os.Getegid())
	} else {
		a := s.dbusOwner(name)
		if a == nil {
			s.dbusError(c, h, dbusNameHasNoOwner, "Could not get credentials of name '"+name+"': no such name")
			return
		}
		uid, pid, gid = uint32(a.c.cred.UID), uint32(a.c.cred.PID), uint32(a.c.cred.GID)
	}
	e := dbuswire.NewEncoder('l')
	switch h.Member {
	case "GetConnectionUnixUser":
		e.Uint32(uid)
		s.driverReply(c, h, "u", e.Bytes())
	case "GetConnectionUnixProcessID":
		e.Uint32(pid)
		s.driverReply(c, h, "u", e.Bytes())
	case "GetConnectionCredentials":
		e.Array("{sv}", func() {
			e.DictEntry(func() { e.String("UnixUserID"); e.Variant("u", func() { e.Uint32(uid) }) })
			e.DictEntry(func() { e.String("UnixGroupIDs"); e.Variant("au", func() { e.Array("u", func() { e.Uint32(gid) }) }) })
			e.DictEntry(func() { e.String("ProcessID"); e.Variant("u", func() { e.Uint32(pid) }) })
		})
		s.driverReply(c, h, "a{sv}", e.Bytes())
	case "GetAdtAuditSessionData":
		s.dbusError(c, h, dbusPrefix+"AdtAuditDataUnknown", "porter's bus has no audit data for "+name)
	default:
		s.dbusError(c, h, dbusPrefix+"SELinuxSecurityContextUnknown", "porter's bus has no security context for "+name)
	}
}

// driverAddMatch turns a D-Bus match rule into a native match (docs/dbus.md,
// "Match rules") and adds it through ADD_MATCH.
func (s *masterState) driverAddMatch(c *mconn, h *dbuswire.Header, text string) {
	rule, err := dbuswire.ParseRule(text)
	if err != nil {
		s.dbusError(c, h, dbusMatchInvalid, err.Error())
		return
	}
	d := c.d
	if len(d.rules) >= int(s.welcome.MaxMatches) {
		s.dbusError(c, h, dbusLimitsExceeded, "max_matches ("+itoa(int(s.welcome.MaxMatches))+") reached")
		return
	}
	mb, selects, err := s.nativeMatch(rule)
	if err != nil {
		s.dbusError(c, h, dbusMatchInvalid, err.Error())
		return
	}
	d.cookie++
	cookie := d.cookie
	canon := rule.String()
	if !selects {
		// A rule that selects no broadcast: kept for RemoveMatch only.
		if d.rules == nil {
			d.rules = map[uint64]string{}
		}
		d.rules[cookie] = canon
		s.driverReply(c, h, "", nil)
		return
	}
	mb.Cookie = cookie
	f := &Frame{Type: TypeAddMatch, Body: mb.Encode()}
	s.nativeRequest(c, h, f, &driverCall{ok: func(*Frame) (string, []byte) {
		if d.rules == nil {
			d.rules = map[uint64]string{}
		}
		d.rules[cookie] = canon
		return "", nil
	}, errName: func(code Code) string {
		if code == CodeInvalid || code == CodeBadBloom {
			return dbusMatchInvalid
		}
		return ""
	}}, s.addMatch)
}

// nativeMatch is the native match of a D-Bus rule, and whether it can
// select a broadcast signal at all.
func (s *masterState) nativeMatch(r *dbuswire.Rule) (AddMatchBody, bool, error) {
	var mb AddMatchBody
	if r.Type != 0 && r.Type != dbuswire.TypeSignal || r.Destination != "" {
		return mb, false, nil
	}
	add := func(kind RuleKind, index int, v string) error {
		if index >= MaxArgs {
			return &Error{Code: CodeInvalid, Text: "porter matches arguments 0–15, not arg" + itoa(index)}
		}
		mb.Rules = append(mb.Rules, Rule{Kind: kind, Index: uint8(index), Value: v})
		return nil
	}
	switch {
	case r.Sender == "":
	case r.Sender == DriverName:
		mb.Sender = AddrBus
	case strings.HasPrefix(r.Sender, ":"):
		a, err := ParseAddress(r.Sender)
		if err != nil || a <= AddrBus {
			return mb, false, nil // no such address, ever: selects nothing
		}
		mb.Sender = a
	default:
		add(RuleSenderName, 0, r.Sender)
	}
	for _, kv := range []struct {
		kind RuleKind
		v    string
	}{{RuleInterface, r.Interface}, {RuleMember, r.Member}, {RulePath, r.Path}, {RulePathNamespace, r.PathNamespace}, {RuleArg0Namespace, r.Arg0Namespace}} {
		if kv.v != "" {
			add(kv.kind, 0, kv.v)
		}
	}
	for _, i := range sortedKeys(r.Args) {
		if err := add(RuleArg, i, r.Args[i]); err != nil {
			return mb, false, err
		}
	}
	for _, i := range sortedKeys(r.ArgPaths) {
		if err := add(RuleArgPath, i, r.ArgPaths[i]); err != nil {
			return mb, false, err
		}
	}
	mb.Bloom = MatchBloom(s.bloom, mb.Rules)
	return mb, true, nil
}

func sortedKeys(m map[int]string) []int {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// driverRemoveMatch removes one match equal to the rule.
func (s *masterState) driverRemoveMatch(c *mconn, h *dbuswire.Header, text string) {
	rule, err := dbuswire.ParseRule(text)
	if err != nil {
		s.dbusError(c, h, dbusMatchInvalid, err.Error())
		return
	}
	canon := rule.String()
	d := c.d
	var cookie uint64
	for k, v := range d.rules {
		if v == canon && (cookie == 0 || k < cookie) {
			cookie = k
		}
	}
	if cookie == 0 {
		s.dbusError(c, h, dbusMatchNotFound, "The given match rule wasn't found and can't be removed")
		return
	}
	delete(d.rules, cookie)
	s.removeMatch(c, cookie)
	s.driverReply(c, h, "", nil)
}

// driverProperties answers org.freedesktop.DBus.Properties on the driver:
// Features and Interfaces, both empty.
func (s *masterState) driverProperties(c *mconn, h *dbuswire.Header, body []byte) {
	switch h.Member {
	case "Get":
		if h.Signature != "ss" {
			s.dbusError(c, h, dbusInvalidArgs, "Call to Get has wrong args ("+h.Signature+", expected ss)")
			return
		}
		d := dbuswire.NewDecoder(h.Order, h.Signature, body)
		iface, _ := d.String()
		prop, err := d.String()
		if err != nil {
			s.dbusError(c, h, dbusInvalidArgs, err.Error())
			return
		}
		if iface != DriverName || prop != "Features" && prop != "Interfaces" {
			s.dbusError(c, h, dbusPrefix+"UnknownProperty", "no property "+prop+" on "+iface)
			return
		}
		e := dbuswire.NewEncoder('l')
		e.Variant("as", func() { e.Strings(nil) })
		s.driverReply(c, h, "v", e.Bytes())
	case "GetAll":
		e := dbuswire.NewEncoder('l')
		e.Array("{sv}", func() {
			for _, p := range []string{"Features", "Interfaces"} {
				e.DictEntry(func() { e.String(p); e.Variant("as", func() { e.Strings(nil) }) })
			}
		})
		s.driverReply(c, h, "a{sv}", e.Bytes())
	case "Set":
		s.dbusError(c, h, dbusPrefix+"PropertyReadOnly", "the driver's properties are read-only")
	default:
		s.dbusError(c, h, dbusUnknownMethod, "No such method "+h.Member+" on org.freedesktop.DBus.Properties")
	}
}

// driverBecomeMonitor is BecomeMonitor(as rules, u flags): the native
// BECOME_MONITOR, with the rules kept to filter the copies.
func (s *masterState) driverBecomeMonitor(c *mconn, h *dbuswire.Header, body []byte) {
	if h.Signature != "asu" {
		s.dbusError(c, h, dbusInvalidArgs, "Call to BecomeMonitor has wrong args ("+h.Signature+", expected asu)")
		return
	}
	d := dbuswire.NewDecoder(h.Order, h.Signature, body)
	texts, err := d.Strings()
	var flags uint32
	if err == nil {
		flags, err = d.Uint32()
	}
	if err != nil {
		s.dbusError(c, h, dbusInvalidArgs, err.Error())
		return
	}
	if flags != 0 {
		s.dbusError(c, h, dbusInvalidArgs, "BecomeMonitor's flags must be 0")
		return
	}
	var rules []*dbuswire.Rule
	for _, t := range texts {
		r, err := dbuswire.ParseRule(t)
		if err != nil {
			s.dbusError(c, h, dbusMatchInvalid, err.Error())
			return
		}
		rules = append(rules, r)
	}
	f := &Frame{Type: TypeBecomeMonitor, Body: U32Body(0)}
	s.nativeRequest(c, h, f, &driverCall{ok: func(*Frame) (string, []byte) {
		c.d.monitorRules = rules
		return "", nil
	}}, s.becomeMonitor)
	if c.monitor && !c.dead {
		// As dbus-daemon: the monitor's unique name goes.
		if fr, err := NameLost(0, FormatAddress(c.primary.addr), c.primary.addr); err == nil {
			s.sendFrame(c, fr)
		}
		s.dbusUniqueChanged(c.primary.addr, false)
	}
}

// driverIntrospection is the driver's Introspect answer.
const driverIntrospection = `<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
  <interface name="org.freedesktop.DBus">
    <method name="Hello"><arg direction="out" type="s"/></method>
    <method name="RequestName"><arg direction="in" type="s"/><arg direction="in" type="u"/><arg direction="out" type="u"/></method>
    <method name="ReleaseName"><arg direction="in" type="s"/><arg direction="out" type="u"/></method>
    <method name="StartServiceByName"><arg direction="in" type="s"/><arg direction="in" type="u"/><arg direction="out" type="u"/></method>
    <method name="UpdateActivationEnvironment"><arg direction="in" type="a{ss}"/></method>
    <method name="NameHasOwner"><arg direction="in" type="s"/><arg direction="out" type="b"/></method>
    <method name="ListNames"><arg direction="out" type="as"/></method>
    <method name="ListActivatableNames"><arg direction="out" type="as"/></method>
    <method name="AddMatch"><arg direction="in" type="s"/></method>
    <method name="RemoveMatch"><arg direction="in" type="s"/></method>
    <method name="GetNameOwner"><arg direction="in" type="s"/><arg direction="out" type="s"/></method>
    <method name="ListQueuedOwners"><arg direction="in" type="s"/><arg direction="out" type="as"/></method>
    <method name="GetConnectionUnixUser"><arg direction="in" type="s"/><arg direction="out" type="u"/></method>
    <method name="GetConnectionUnixProcessID"><arg direction="in" type="s"/><arg direction="out" type="u"/></method>
    <method name="GetAdtAuditSessionData"><arg direction="in" type="s"/><arg direction="out" type="ay"/></method>
    <method name="GetConnectionSELinuxSecurityContext"><arg direction="in" type="s"/><arg direction="out" type="ay"/></method>
    <method name="GetConnectionCredentials"><arg direction="in" type="s"/><arg direction="out" type="a{sv}"/></method>
    <method name="ReloadConfig"/>
    <method name="GetId"><arg direction="out" type="s"/></method>
    <signal name="NameOwnerChanged"><arg type="s"/><arg type="s"/><arg type="s"/></signal>
    <signal name="NameLost"><arg type="s"/></signal>
    <signal name="NameAcquired"><arg type="s"/></signal>
    <property name="Features" type="as" access="read"/>
    <property name="Interfaces" type="as" access="read"/>
  </interface>
  <interface name="org.freedesktop.DBus.Monitoring">
    <method name="BecomeMonitor"><arg direction="in" type="as"/><arg direction="in" type="u"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Properties">
    <method name="Get"><arg direction="in" type="s"/><arg direction="in" type="s"/><arg direction="out" type="v"/></method>
    <method name="GetAll"><arg direction="in" type="s"/><arg direction="out" type="a{sv}"/></method>
    <method name="Set"><arg direction="in" type="s"/><arg direction="in" type="s"/><arg direction="in" type="v"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect"><arg direction="out" type="s"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Peer">
    <method name="GetMachineId"><arg direction="out" type="s"/></method>
    <method name="Ping"/>
  </interface>
</node>
`
