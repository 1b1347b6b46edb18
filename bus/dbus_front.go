package bus

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"math"
	"net"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/porter-ipc/porter/fdpass"
	"github.com/porter-ipc/porter/internal/dbuswire"
	"github.com/porter-ipc/porter/internal/sockpath"
)

// The D-Bus front door (docs/dbus.md). A D-Bus connection is an endpoint
// of the master like a native one, served by the same loop: this file
// reads and writes its byte stream, authenticates it, and turns its
// messages into the master's frames and the master's frames into D-Bus
// messages. The driver, org.freedesktop.DBus, is dbus_driver.go.

// DriverName is the D-Bus name of the bus itself.
const DriverName = "org.freedesktop.DBus"

// FieldDBusOrder marks a body marshalled big-endian by a D-Bus sender:
// the value is the one byte 'B' (docs/dbus.md, "One bus, two front doors").
const FieldDBusOrder FieldCode = 0x0100

const (
	driverPath      = "/org/freedesktop/DBus"
	dbusReadChunk   = 64 << 10
	dbusMaxFDs      = fdpass.MaxFDsPerMessage
	dbusPendingFDs  = 4 * fdpass.MaxFDsPerMessage // fds received and not yet claimed by a message
	dbusSmallBuffer = 4 << 10                     // a connection keeps a read buffer this small between messages

	// A message read into a buffer of its own (one that did not fit the
	// shared read buffer) is read dbusHeadroom bytes into it; from
	// dbusInPlaceMin bytes of body, the D-Bus message its receivers get
	// is written around the body where it lies, header in front (the
	// headroom and the sender's header), not copied (dbusEncodeFrom).
	dbusHeadroom   = 256
	dbusInPlaceMin = 64 << 10

	// dbusMaxFrame is the largest frame a D-Bus message becomes.
	dbusMaxFrame = dbuswire.MaxMessage + MasterRoom + 16<<10
)

// dconn is the D-Bus side of a connection.
type dconn struct {
	auth   *dbuswire.Server  // until BEGIN
	fds    bool              // NEGOTIATE_UNIX_FD was agreed
	in     []byte            // bytes of a message not yet whole
	base   []byte            // the buffer in lies in, dbusHeadroom bytes into it, when readDBus made it
	place  []byte            // the message being routed with the headroom before it, when its body may go out in place
	gone   bool              // base went out as a message: readDBus must not reuse it
	infds  []*os.File        // fds received and not yet claimed by a message
	off    int               // bytes of c.out[0] already written
	cookie uint64            // the last match cookie given
	rules  map[uint64]string // match cookie → the rule's canonical text, for RemoveMatch

	refused int // bytes discarded since the first message was not Hello (-1: not refused)

	pending      map[uint64]*driverCall // driver calls awaiting their native answer, by serial
	monitorRules []*dbuswire.Rule       // BecomeMonitor's rules, filtering the copies
}

func (s *masterState) newDConn(cred fdpass.Cred) *dconn {
	return &dconn{auth: &dbuswire.Server{UID: uint32(cred.UID), GUID: hex.EncodeToString(s.welcome.BusID[:]), UnixFD: true}, refused: -1}
}

// drop closes what d holds.
func (d *dconn) drop() {
	closeAll(d.infds)
	d.infds, d.in, d.base, d.place = nil, nil, nil, nil
}

// ListenDBus makes the master also serve the D-Bus wire protocol on a
// SOCK_STREAM socket at path (docs/dbus.md): clients connect with
// DBUS_SESSION_BUS_ADDRESS=unix:path=PATH. The socket is mode 0666; a
// stale socket is replaced, anything else at path refused. Call it before
// Serve; Close removes the socket.
func (m *Master) ListenDBus(path string) error {
	if m.serving.Load() {
		return errors.New("bus: ListenDBus after Serve")
	}
	if m.dln != nil {
		return errors.New("bus: ListenDBus called twice")
	}
	ln, id, err := sockpath.ListenWith("unix", path, sockpath.Options{Perm: 0o666})
	if err != nil {
		return err
	}
	fail := func(op string, err error) error {
		ln.Close()
		return &net.OpError{Op: op, Net: "unix", Addr: &net.UnixAddr{Name: path, Net: "unix"}, Err: os.NewSyscallError(op, err)}
	}
	rc, err := ln.SyscallConn()
	if err != nil {
		return fail("listen", err)
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return fail("listen", err)
	}
	if err := m.epollAdd(fd, unix.EPOLLIN); err != nil {
		return fail("epoll_ctl", err)
	}
	m.dln, m.dlfd, m.dpath, m.dfileID = ln, fd, path, id
	return nil
}

// DBusAddr is the D-Bus address of the front door ("unix:path=…"), or ""
// without ListenDBus.
func (m *Master) DBusAddr() string {
	if m.dln == nil {
		return ""
	}
	return "unix:path=" + dbusEscape(m.dpath)
}

// dbusEscape escapes a value of a D-Bus address: bytes other than
// [-0-9A-Za-z_/.\*] become %XX.
func dbusEscape(v string) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || strings.IndexByte("-_/.\\*", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		b.WriteString("%" + hex.EncodeToString([]byte{c}))
	}
	return b.String()
}

// readDBus reads what waits on a D-Bus connection: one recvmsg per event,
// as for native connections; every message it completes is handled.
func (s *masterState) readDBus(c *mconn, hup bool) {
	// What its messages send waits in the receivers' queues and goes
	// out when the read is done, each queue in one write (flushDirty).
	s.batching = true
	defer s.flushDirty(c)
	d := c.d
	n := 1
	if hup {
		n = 1 << 20
	}
	for i := 0; i < n && !c.dead && (!c.paused || hup); i++ {
		var dst []byte
		if len(d.in) > 0 {
			need := len(d.in) + dbusReadChunk
			if d.auth == nil && len(d.in) >= 16 {
				if l, err := dbuswire.MessageLen(d.in); err == nil && l > len(d.in) {
					// Read the rest of this message straight into place,
					// growing as it comes: a header announcing 128 MiB
					// costs what was really sent, not 128 MiB at once.
					need = min(l, max(2*cap(d.in), len(d.in)+dbusReadChunk))
				}
			}
			if cap(d.in) < need {
				d.base = make([]byte, dbusHeadroom+need)
				grown := d.base[dbusHeadroom : dbusHeadroom+len(d.in)]
				copy(grown, d.in)
				d.in = grown
			}
			dst = d.in[len(d.in):cap(d.in)]
		} else {
			if s.dbuf == nil {
				s.dbuf = make([]byte, dbusReadChunk)
			}
			dst = s.dbuf
		}
		msg, err := c.c.Recv(dst, dbusMaxFDs)
		if err != nil {
			switch {
			case errors.Is(err, fdpass.ErrWouldBlock):
				if c.wclosed {
					s.kill(c, GoneDied, "") // all it sent is handled
				}
			case errors.Is(err, io.EOF), errors.Is(err, unix.ECONNRESET):
				s.kill(c, GoneDied, "")
			default:
				// ErrTruncated, ErrFDLimit: fds were lost, so the
				// stream's messages and fds no longer line up.
				s.kill(c, GoneDied, "D-Bus connection: "+err.Error())
			}
			return
		}
		if msg.N == 0 {
			msg.Close()
			s.kill(c, GoneDied, "")
			return
		}
		d.infds = append(d.infds, msg.Files...)
		if len(d.infds) > dbusPendingFDs {
			s.kill(c, GoneDied, "D-Bus connection: more than "+itoa(dbusPendingFDs)+" fds sent ahead of their messages")
			return
		}
		var buf []byte
		if len(d.in) > 0 {
			d.in = d.in[:len(d.in)+msg.N]
			buf = d.in
		} else {
			buf = s.dbuf[:msg.N]
		}
		rest := s.dbusInput(c, buf)
		if d.gone {
			// Its buffer went out with a message: not to be written
			// again. (A buffer made for a large message holds only
			// it, so nothing is lost: a guard.)
			d.in, d.base, d.gone = nil, nil, false
		}
		switch {
		case c.dead:
			return
		case len(rest) == 0:
			if cap(d.in) > dbusSmallBuffer {
				d.in, d.base = nil, nil
			} else {
				d.in = d.in[:0]
			}
		case len(d.in) > 0:
			d.in = d.in[:copy(d.in, rest)]
		default:
			d.in = append(make([]byte, 0, max(len(rest), 256)), rest...)
			d.base = nil
		}
	}
}

// dbusInput handles the whole messages (or authentication lines) at the
// start of buf and returns the incomplete rest.
func (s *masterState) dbusInput(c *mconn, buf []byte) []byte {
	d := c.d
	if d.refused >= 0 {
		// Not joined and never will be: what it still sends is read and
		// dropped, so that a client that sent one message and closes
		// (gdbus emit without Hello) sees no error; a bounded amount.
		if d.refused += len(buf); d.refused > dbusReadChunk {
			s.kill(c, GoneDied, "")
		}
		closeAll(d.infds)
		d.infds = nil
		return nil
	}
	for !c.dead {
		if d.auth != nil {
			out, done, rest, err := d.auth.Feed(buf)
			if len(out) > 0 {
				s.send(c, outFrame{b: out, dbus: true})
			}
			if err != nil {
				s.m.logf("bus: D-Bus connection of pid %d uid %d: authentication: %v", c.cred.PID, c.cred.UID, err)
				s.kill(c, GoneDied, "")
				return nil
			}
			if !done {
				return nil // Feed keeps a partial line
			}
			d.fds = d.auth.UnixFDAgreed()
			d.auth = nil
			buf = rest
			continue
		}
		if len(buf) < 16 {
			return buf
		}
		l, err := dbuswire.MessageLen(buf)
		if err != nil {
			s.dbusDrop(c, "malformed message: "+err.Error())
			return nil
		}
		if len(buf) < l {
			return buf
		}
		s.dbusMessage(c, buf[:l])
		buf = buf[l:]
	}
	return nil
}

// dbusDrop closes a D-Bus connection that broke the protocol, with the
// reason logged.
func (s *masterState) dbusDrop(c *mconn, why string) {
	if !c.joined {
		s.m.logf("bus: D-Bus connection of pid %d uid %d dropped: %s", c.cred.PID, c.cred.UID, why)
	}
	s.kill(c, GoneDied, why)
}

// dbusMessage handles one whole message from a D-Bus connection.
func (s *masterState) dbusMessage(c *mconn, b []byte) {
	d := c.d
	h, body, err := dbuswire.ParseMessage(b)
	if err != nil {
		s.dbusDrop(c, "malformed message: "+err.Error())
		return
	}
	var files []*os.File
	if h.UnixFDs > 0 {
		switch {
		case !d.fds:
			s.dbusDrop(c, "UNIX_FDS without NEGOTIATE_UNIX_FD")
			return
		case int(h.UnixFDs) > len(d.infds):
			s.dbusDrop(c, "the message says "+utoa(uint64(h.UnixFDs))+" fds, "+itoa(len(d.infds))+" arrived")
			return
		}
		files = append([]*os.File(nil), d.infds[:h.UnixFDs]...)
		d.infds = d.infds[h.UnixFDs:]
		if len(d.infds) == 0 {
			d.infds = nil
		}
	}
	if !c.joined {
		closeAll(files)
		if h.Member == "Hello" {
			s.dbusCopyIn(&h, body, FormatAddress(s.nextAddr)) // the address Hello will give
		} else {
			// As dbus-daemon shows it: from a connection without a name.
			s.dbusCopyIn(&h, body, ":not.active.yet")
		}
		s.dbusHello(c, &h)
		return
	}
	if c.monitor {
		closeAll(files)
		s.dbusDrop(c, "a monitor sent a message")
		return
	}
	if h.Destination == DriverName {
		closeAll(files)
		s.dbusCopyIn(&h, body, FormatAddress(c.primary.addr))
		s.driver(c, &h, body)
		return
	}
	if len(body) >= dbusInPlaceMin && len(d.base) > dbusHeadroom && &b[0] == &d.base[dbusHeadroom] {
		d.place = d.base[:dbusHeadroom+len(b)]
	}
	s.dbusRoute(c, &h, body, files)
	d.place = nil
}

// dbusRoute turns a D-Bus message into a frame and routes it as the
// master routes native frames: reply slots, policy, quotas, matches.
func (s *masterState) dbusRoute(c *mconn, h *dbuswire.Header, body []byte, files []*os.File) {
	f := &Frame{Type: Type(h.Type), Flags: Flags(h.Flags), NFDs: uint16(len(files)), Serial: uint64(h.Serial),
		ReplySerial: uint64(h.ReplySerial), Source: c.primary.addr}
	s.dcur, s.dcurConn = h, c
	defer func() { s.dcur, s.dcurConn = nil, nil }()
	if h.Destination != "" {
		if h.Destination[0] == ':' {
			a, err := ParseAddress(h.Destination)
			if err != nil || a <= AddrBus {
				closeAll(files)
				s.dbusError(c, h, dbusServiceUnknown, "The name "+h.Destination+" was not provided by any .service files")
				return
			}
			f.Destination = a
		} else {
			f.SetField(FieldDestName, []byte(h.Destination))
		}
	}
	for _, fv := range [...]struct {
		code FieldCode
		v    string
	}{{FieldPath, h.Path}, {FieldInterface, h.Interface}, {FieldMember, h.Member}, {FieldErrorName, h.ErrorName}, {FieldSignature, h.Signature}} {
		if fv.v != "" {
			f.SetField(fv.code, []byte(fv.v))
		}
	}
	if h.Order == 'B' {
		f.SetField(FieldDBusOrder, []byte{'B'})
	}
	if h.Type == dbuswire.TypeSignal && h.Destination == "" {
		sig := Signal{Path: h.Path, Interface: h.Interface, Member: h.Member, Args: s.dbusArgs(h, body)}
		if len(sig.Args) > 0 {
			if v, err := EncodeArgs(sig.Args); err == nil {
				f.SetField(FieldArgs, v)
			}
		}
		f.SetField(FieldBloom, SignalBloom(s.bloom, sig))
	}
	f.Body = body
	r := Rules{Path: PathToMaster, Joined: true, MaxFrame: dbusMaxFrame}
	if err := r.Check(f); err != nil {
		closeAll(files)
		s.dbusError(c, h, dbusInvalidArgs, "porter cannot carry this message: "+errText(err))
		return
	}
	s.beginCopy(c, f, len(files))
	defer s.endCopy()
	s.route(c, f, files)
}

// dbusArgs is the ARGS of a broadcast signal: its first 16 string and
// object-path arguments, those that fit the field's limits.
func (s *masterState) dbusArgs(h *dbuswire.Header, body []byte) []Arg {
	if h.Signature == "" {
		return nil
	}
	got, err := dbuswire.StringArgs(h.Order, h.Signature, body, MaxArgs)
	if err != nil && len(got) == 0 {
		return nil
	}
	var args []Arg
	size := 0
	for _, a := range got {
		if a.Index >= MaxArgs || len(a.Value) > MaxArgLen || size+4+len(a.Value) > 4096 {
			continue
		}
		kind := ArgString
		if a.Kind == 'o' {
			kind = ArgPath
		}
		size += 4 + len(a.Value)
		args = append(args, Arg{Index: uint8(a.Index), Kind: kind, Value: a.Value})
	}
	return args
}

// senderName is the D-Bus SENDER of a frame from address a.
func senderName(a uint64) string {
	if a == AddrBus {
		return DriverName
	}
	return FormatAddress(a)
}

// dbusEncode writes a data frame as a D-Bus message for a D-Bus
// connection (docs/dbus.md, "One bus, two front doors").
func dbusEncode(f *Frame) ([]byte, error) {
	h, body, err := dbusHeader(f)
	if err != nil {
		return nil, err
	}
	return dbuswire.AppendMessage(make([]byte, 0, len(body)+256), &h, body), nil
}

// dbusEncodeFrom is dbusEncode for a frame that c sent: when it is the
// large D-Bus message c's read buffer holds (dconn.place), the message
// is written in that buffer, its header in front of the body, which is
// not copied; the buffer then belongs to the message (dconn.gone). Once
// per message: the frame's later encodings are copies.
func dbusEncodeFrom(c *mconn, f *Frame) ([]byte, error) {
	d := c.d
	if d == nil || len(f.Body) == 0 || len(f.Body) > len(d.place) || &f.Body[0] != &d.place[len(d.place)-len(f.Body)] {
		return dbusEncode(f)
	}
	h, body, err := dbusHeader(f)
	if err != nil {
		return nil, err
	}
	if len(body) != len(f.Body) || &body[0] != &f.Body[0] {
		return dbuswire.AppendMessage(make([]byte, 0, len(body)+256), &h, body), nil
	}
	var scratch [512]byte
	hdr := dbuswire.AppendMessage(scratch[:0], &h, nil)
	room := len(d.place) - len(body)
	if len(hdr) > room {
		return dbuswire.AppendMessage(make([]byte, 0, len(body)+256), &h, body), nil
	}
	if h.Order == 'B' {
		binary.BigEndian.PutUint32(hdr[4:], uint32(len(body)))
	} else {
		binary.LittleEndian.PutUint32(hdr[4:], uint32(len(body)))
	}
	out := d.place[room-len(hdr):]
	copy(out, hdr)
	d.place, d.gone = nil, true
	return out, nil
}

// dbusHeader is the D-Bus header of a data frame, and its body as D-Bus
// carries it: f.Body itself, or marshalled as "ay" (an ERROR's as "s")
// when it has no signature.
func dbusHeader(f *Frame) (dbuswire.Header, []byte, error) {
	if f.Serial > math.MaxUint32 || f.ReplySerial > math.MaxUint32 {
		return dbuswire.Header{}, nil, &Error{Code: CodeInvalid, Text: "a D-Bus peer takes serials below 2³²"}
	}
	if _, ok := f.Field(FieldMemfd); ok {
		return dbuswire.Header{}, nil, &Error{Code: CodeFdsRefused, Text: "a memfd payload cannot reach a D-Bus peer: send it inline"}
	}
	h := dbuswire.Header{Order: 'l', Type: byte(f.Type), Flags: byte(f.Flags), Serial: uint32(f.Serial),
		ReplySerial: uint32(f.ReplySerial), Path: f.Text(FieldPath), Interface: f.Text(FieldInterface),
		Member: f.Text(FieldMember), ErrorName: f.Text(FieldErrorName), Signature: f.Text(FieldSignature),
		Sender: senderName(f.Source), UnixFDs: uint32(f.NFDs)}
	if v, ok := f.Field(FieldDBusOrder); ok && len(v) == 1 && v[0] == 'B' {
		h.Order = 'B'
	}
	if n := f.Text(FieldDestName); n != "" {
		h.Destination = n
	} else if f.Destination > AddrBus {
		h.Destination = FormatAddress(f.Destination)
	}
	if h.Type == dbuswire.TypeMethodCall && h.Path == "" {
		h.Path = "/"
	}
	body := f.Body
	if h.Signature == "" && len(body) > 0 {
		e := dbuswire.NewEncoder(h.Order)
		if h.Type == dbuswire.TypeError {
			h.Signature = "s"
			e.String(dbusText(string(body)))
		} else {
			h.Signature = "ay"
			e.ByteArray(body)
		}
		body = e.Bytes()
	}
	return h, body, nil
}

// dbusText makes s a valid D-Bus string: UTF-8 without NUL.
func dbusText(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "")
}

// toDBus turns what the master queues for a D-Bus connection as a frame
// (its answers, notices, monitor copies) into a D-Bus message; o.b nil
// when there is nothing to send.
func (s *masterState) toDBus(c *mconn, o outFrame) outFrame {
	// As large as a D-Bus message may be: a monitor's copy of one is a
	// frame that size, not a native endpoint's 64 KiB.
	r := Rules{MaxFrame: dbusMaxFrame}
	f, err := r.Decode(o.b, -1)
	var b []byte
	if err == nil {
		b, err = s.dbusFromMaster(c, f)
	}
	if err != nil {
		s.m.logf("bus: internal: a %v for D-Bus connection %s: %v", Type(o.b[1]), FormatAddress(destOf(c)), err)
	}
	if b == nil {
		closeAll(o.files)
		if o.from != nil && o.data {
			// Nothing queued: nothing to account for.
			o.from = nil
		}
		return outFrame{}
	}
	o.b, o.dbus = b, true
	return o
}

// dbusFromMaster translates one frame for a D-Bus connection: data frames
// as they are, the master's own answers and signals into the driver's.
func (s *masterState) dbusFromMaster(c *mconn, f *Frame) ([]byte, error) {
	if f.Type == TypeDone || f.Type == TypeFail || f.Type == TypeWelcome {
		if dc := c.d.pending[f.ReplySerial]; dc != nil {
			delete(c.d.pending, f.ReplySerial)
			return dc.answer(s, c, f)
		}
	}
	if _, ok := f.Field(FieldMonitor); ok {
		if !f.Type.Data() {
			return nil, nil // the copy of a native request: nothing D-Bus shows
		}
		return s.dbusMonitorCopy(c, f)
	}
	switch {
	case f.Type == TypeFail:
		fb, err := ParseFail(f.Body)
		if err != nil {
			return nil, err
		}
		if cur := s.dcur; cur != nil && s.dcurConn == c && f.ReplySerial == uint64(cur.Serial) && c.primary != nil {
			if cur.Type != dbuswire.TypeMethodCall || cur.Flags&dbuswire.FlagNoReplyExpected != 0 {
				s.dbusRefusedLog(c, cur, fb)
				return nil, nil
			}
			return s.dbusCopied(s.dbusErrorBytes(c, uint32(f.ReplySerial), dbusErrorName(fb.Code, cur.Flags), s.dbusErrorText(fb, cur))), nil
		}
		if f.ReplySerial == 0 || f.ReplySerial > math.MaxUint32 {
			s.m.logf("bus: D-Bus connection %s: %v %s", FormatAddress(destOf(c)), fb.Code, fb.Text)
			return nil, nil
		}
		return s.dbusCopied(s.dbusErrorBytes(c, uint32(f.ReplySerial), dbusErrorName(fb.Code, 0), fb.Text)), nil
	case f.Type == TypeSignal && f.Source == AddrBus:
		return s.dbusBusSignal(c, f)
	case f.Type.Data():
		return dbusEncode(f)
	}
	return nil, nil // the master's other answers mean nothing to a D-Bus client
}

// dbusRefusedLog logs a refused message that nobody can be told of (a
// signal, a reply, a call with NO_REPLY_EXPECTED); a few per connection.
func (s *masterState) dbusRefusedLog(c *mconn, h *dbuswire.Header, fb FailBody) {
	if c.warned >= 3 {
		return
	}
	c.warned++
	s.m.logf("bus: dropped a %s from D-Bus connection %s (pid %d, uid %d): %v: %s",
		dbusTypeName(h.Type), FormatAddress(destOf(c)), c.cred.PID, c.cred.UID, fb.Code, fb.Text)
}

func dbusTypeName(t byte) string {
	switch t {
	case dbuswire.TypeMethodCall:
		return "method call"
	case dbuswire.TypeMethodReturn:
		return "method return"
	case dbuswire.TypeError:
		return "error"
	}
	return "signal"
}

// The D-Bus error names the master answers with.
const (
	dbusPrefix           = "org.freedesktop.DBus.Error."
	dbusServiceUnknown   = dbusPrefix + "ServiceUnknown"
	dbusNameHasNoOwner   = dbusPrefix + "NameHasNoOwner"
	dbusAccessDenied     = dbusPrefix + "AccessDenied"
	dbusLimitsExceeded   = dbusPrefix + "LimitsExceeded"
	dbusNotSupported     = dbusPrefix + "NotSupported"
	dbusNoReply          = dbusPrefix + "NoReply"
	dbusInvalidArgs      = dbusPrefix + "InvalidArgs"
	dbusFailed           = dbusPrefix + "Failed"
	dbusUnknownMethod    = dbusPrefix + "UnknownMethod"
	dbusUnknownInterface = dbusPrefix + "UnknownInterface"
	dbusMatchInvalid     = dbusPrefix + "MatchRuleInvalid"
	dbusMatchNotFound    = dbusPrefix + "MatchRuleNotFound"
)

// dbusErrorName maps a native code to the D-Bus error of docs/dbus.md.
func dbusErrorName(code Code, flags byte) string {
	switch code {
	case CodeNameHasNoOwner, CodeUnknownAddress:
		if flags&dbuswire.FlagNoAutoStart != 0 {
			return dbusNameHasNoOwner
		}
		return dbusServiceUnknown
	case CodeDenied:
		return dbusAccessDenied
	case CodeQueueFull, CodeQuota, CodeFDLimit:
		return dbusLimitsExceeded
	case CodeFdsRefused:
		return dbusNotSupported
	case CodePeerGone:
		return dbusNoReply
	case CodeInvalid, CodeTooLarge:
		return dbusInvalidArgs
	}
	return dbusFailed
}

// dbusError answers the D-Bus message h with an error from the bus,
// unless nothing may answer it.
func (s *masterState) dbusError(c *mconn, h *dbuswire.Header, name, text string) {
	if h.Type != dbuswire.TypeMethodCall || h.Flags&dbuswire.FlagNoReplyExpected != 0 {
		s.dbusRefusedLog(c, h, FailBody{Code: CodeInvalid, Text: name + ": " + text})
		return
	}
	s.send(c, outFrame{b: s.dbusCopied(s.dbusErrorBytes(c, h.Serial, name, text)), dbus: true})
}

// dbusCopied copies b, a message from the driver, to the D-Bus monitors
// and returns it.
func (s *masterState) dbusCopied(b []byte) []byte {
	s.dbusCopy(b)
	return b
}

// dbusErrorText is the text of the error a refused D-Bus call gets: the
// words dbus-daemon uses where clients show them, else the master's.
func (s *masterState) dbusErrorText(fb FailBody, h *dbuswire.Header) string {
	switch fb.Code {
	case CodeNameHasNoOwner, CodeUnknownAddress:
		if h.Flags&dbuswire.FlagNoAutoStart != 0 {
			return "Name \"" + h.Destination + "\" does not exist"
		}
		return "The name " + h.Destination + " was not provided by any .service files"
	}
	return fb.Text
}

// dbusErrorBytes is an error message from the bus to c.
func (s *masterState) dbusErrorBytes(c *mconn, replySerial uint32, name, text string) []byte {
	e := dbuswire.NewEncoder('l')
	e.String(dbusText(text))
	return s.dbusFromBus(c, &dbuswire.Header{Type: dbuswire.TypeError, ErrorName: name, ReplySerial: replySerial, Signature: "s"}, e.Bytes(), false)
}

// dbusFromBus completes and encodes a message of the bus to c: its
// serial, sender and destination (none for a broadcast).
func (s *masterState) dbusFromBus(c *mconn, h *dbuswire.Header, body []byte, broadcast bool) []byte {
	c.serial++
	if uint32(c.serial) == 0 {
		c.serial++
	}
	h.Order, h.Serial, h.Sender = 'l', uint32(c.serial), DriverName
	if c.primary != nil && !broadcast {
		h.Destination = FormatAddress(c.primary.addr)
	}
	h.Flags |= dbuswire.FlagNoReplyExpected
	if h.Type == dbuswire.TypeMethodReturn || h.Type == dbuswire.TypeError {
		h.Flags &^= dbuswire.FlagNoReplyExpected
	}
	return dbuswire.AppendMessage(make([]byte, 0, len(body)+192), h, body)
}

// dbusBusSignal translates a signal of the bus (docs/dbus.md, "The
// driver"): NameOwnerChanged, NameAcquired, NameLost, and porter's
// EndpointGone and Lost.
func (s *masterState) dbusBusSignal(c *mconn, f *Frame) ([]byte, error) {
	h, body, err := dbusBusSignalBody(f)
	if err != nil {
		return nil, err
	}
	return s.dbusFromBus(c, &h, body, f.Destination == AddrNone), nil
}

// dbusBusSignalTo is a bus signal with the given serial and destination
// (a monitor's copy).
func (s *masterState) dbusBusSignalTo(f *Frame, serial, dest uint64) ([]byte, error) {
	h, body, err := dbusBusSignalBody(f)
	if err != nil {
		return nil, err
	}
	h.Order, h.Serial, h.Sender = 'l', uint32(serial), DriverName
	if dest > AddrBus {
		h.Destination = FormatAddress(dest)
	}
	h.Flags = dbuswire.FlagNoReplyExpected
	return dbuswire.AppendMessage(nil, &h, body), nil
}

// dbusBusSignalBody is the D-Bus header and body of a bus signal.
func dbusBusSignalBody(f *Frame) (dbuswire.Header, []byte, error) {
	sig, err := SignalOf(f)
	if err != nil {
		return dbuswire.Header{}, nil, err
	}
	arg := func(i uint8) string {
		for _, a := range sig.Args {
			if a.Index == i {
				return a.Value
			}
		}
		return ""
	}
	e := dbuswire.NewEncoder('l')
	h := dbuswire.Header{Type: dbuswire.TypeSignal, Path: sig.Path, Interface: sig.Interface, Member: sig.Member}
	switch sig.Member {
	case "NameOwnerChanged":
		h.Signature = "sss"
		e.String(arg(0))
		e.String(arg(1))
		e.String(arg(2))
	case "NameAcquired", "NameLost":
		h.Signature = "s"
		e.String(arg(0))
	case "EndpointGone":
		if len(f.Body) < 12 {
			return h, nil, errors.New("short EndpointGone")
		}
		h.Signature = "su"
		e.String(arg(0))
		e.Uint32(binary.LittleEndian.Uint32(f.Body[8:]))
	case "Lost":
		if len(f.Body) < 16 {
			return h, nil, errors.New("short Lost")
		}
		h.Signature = "tt"
		e.Uint64(binary.LittleEndian.Uint64(f.Body))
		e.Uint64(binary.LittleEndian.Uint64(f.Body[8:]))
	default:
		return h, nil, errors.New("unknown bus signal " + sig.Member)
	}
	return h, e.Bytes(), nil
}

// dbusMonitorCopy is a D-Bus monitor's copy of a frame, with the original
// sender and destination from its MONITOR field, if the monitor's rules
// (none: all) select it.
func (s *masterState) dbusMonitorCopy(c *mconn, f *Frame) ([]byte, error) {
	v, _ := f.Field(FieldMonitor)
	mi, err := ParseMonitor(v)
	if err != nil {
		return nil, err
	}
	f.Source, f.Destination = mi.From, mi.To
	f.NFDs = mi.NFDs
	var b []byte
	if f.Source == AddrBus && f.Type == TypeSignal {
		// The bus's own signals, as D-Bus shows them; porter's
		// EndpointGone and Lost are not D-Bus traffic unless someone
		// asked for them, which their own copies show.
		if f.Text(FieldInterface) == "porter.Bus" {
			return nil, nil
		}
		b, err = s.dbusBusSignalTo(f, f.Serial, f.Destination)
	} else {
		b, err = dbusEncode(f)
	}
	if err != nil || b == nil || len(c.d.monitorRules) == 0 {
		return b, err
	}
	h, body, err := dbuswire.ParseMessage(b)
	if err != nil {
		return nil, err
	}
	var names []string
	if a := s.addrs[mi.From]; a != nil {
		names = append([]string{FormatAddress(a.addr)}, a.owned...)
	} else {
		names = []string{senderName(mi.From)}
	}
	args, _ := dbuswire.StringArgs(h.Order, h.Signature, body, 64)
	for _, r := range c.d.monitorRules {
		if r.Match(&h, names, args) {
			return b, nil
		}
	}
	return nil, nil
}

// The unique names of D-Bus: every address is one. On a join and on a
// death the master tells the D-Bus connections with a NameOwnerChanged
// for it, as dbus-broker does; native endpoints have EndpointGone.

// dbusUniqueChanged publishes NameOwnerChanged(":1.N", old, new) to the
// D-Bus connections whose matches select it.
func (s *masterState) dbusUniqueChanged(addr uint64, joined bool) {
	if s.m.dln == nil || s.watchers.empty() && !s.monitoring() {
		return // nobody to tell: the signal is not even made
	}
	old, new := addr, uint64(0)
	if joined {
		old, new = 0, addr
	}
	fr, err := BusSignal(s.bloom, 0, 0, "NameOwnerChanged",
		[]string{FormatAddress(addr), FormatAddress(old), FormatAddress(new)}, dbusU64s(old, new))
	if err != nil {
		s.m.logf("bus: internal: NameOwnerChanged for %s: %v", FormatAddress(addr), err)
		return
	}
	s.dbusOnly = true
	s.publish(fr, nil)
	s.dbusOnly = false
}

func dbusU64s(a, b uint64) []byte {
	v := make([]byte, 16)
	binary.LittleEndian.PutUint64(v, a)
	binary.LittleEndian.PutUint64(v[8:], b)
	return v
}

// dbusCopy gives the D-Bus monitors a copy of a D-Bus message that does
// not pass through the master's frames: calls to the driver and what the
// driver answers. Native monitors see the frames only.
func (s *masterState) dbusCopy(b []byte) {
	if !s.monitoring() {
		return
	}
	if s.mon.cur != nil {
		s.mon.laterD = append(s.mon.laterD, b)
		return
	}
	s.dbusToMonitors(b)
}

func (s *masterState) dbusToMonitors(b []byte) {
	var h *dbuswire.Header
	var args []dbuswire.Arg
	var names []string
	for mc := range s.mon.monitors {
		if mc.dead || mc.d == nil {
			continue
		}
		if len(mc.d.monitorRules) > 0 {
			if h == nil {
				hh, body, err := dbuswire.ParseMessage(b)
				if err != nil {
					return
				}
				h = &hh
				args, _ = dbuswire.StringArgs(h.Order, h.Signature, body, 64)
				names = []string{h.Sender}
				if a := s.dbusOwner(h.Sender); a != nil {
					names = append(names, a.owned...)
				}
			}
			if !slices.ContainsFunc(mc.d.monitorRules, func(r *dbuswire.Rule) bool { return r.Match(h, names, args) }) {
				continue
			}
		}
		if !s.room(mc, len(b), nil) {
			mc.lost++
			continue
		}
		s.send(mc, outFrame{b: b, dbus: true, data: true})
	}
}

// dbusCopyIn copies a D-Bus message from c to the driver, with its sender.
func (s *masterState) dbusCopyIn(h *dbuswire.Header, body []byte, sender string) {
	if !s.monitoring() {
		return
	}
	g := *h
	g.Sender = sender
	s.dbusCopy(dbuswire.AppendMessage(nil, &g, body))
}
