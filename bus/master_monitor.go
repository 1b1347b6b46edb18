package bus

import (
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// drainTimeout is how long BECOME_MONITOR waits for introduced channels to
// be disconnected before it answers (docs/protocol-bus.md, "Direct
// channels and the monitor").
const drainTimeout = 2 * time.Second

// monitorState is the master's side of monitoring: who watches, the
// BECOME_MONITOR requests waiting for channels to drain, and the copy of
// the frame being handled.
type monitorState struct {
	monitors  map[*mconn]struct{}
	waiting   []drainWait
	published uint64 // serial of the copies of published bus signals

	// While a frame is handled: its copy is sent after the handling, so
	// that it carries whether it was refused, and the copies of what the
	// handling sent follow it.
	cur      *Frame
	curFrom  uint64
	curTo    uint64
	curConn  *mconn
	curFDs   uint16
	curMemfd bool
	refused  bool
	later    [][]byte
	laterD   [][]byte // D-Bus-only copies (the driver's traffic), after later
}

type drainWait struct {
	c        *mconn
	serial   uint64
	deadline time.Time
	start    int // channels to drain when it asked
}

func (s *masterState) monitoring() bool { return len(s.mon.monitors) > 0 }

// becomeMonitor turns c into a monitor: its names, matches, channels and
// calls go, its addresses stay listed but unreachable, and the bus goes
// to routed mode while any monitor is attached; DONE comes once every
// channel is disconnected or drainTimeout passed.
func (s *masterState) becomeMonitor(c *mconn, f *Frame) {
	if _, err := ParseU32(f.Type, f.Body); err != nil {
		s.fail(c, f.Serial, 0, codeOr(err, CodeInvalid), 0, errText(err))
		return
	}
	if d := s.m.policy(c.cred, Request{Op: OpMonitor}); !d.Allow {
		s.fail(c, f.Serial, 0, CodeDenied, 0, reasonOr(d, "the policy refused monitoring to uid "+itoa(c.cred.UID)))
		return
	}
	for _, a := range c.addrs {
		s.retire(a)
	}
	s.dropMatches(c)
	c.matches = nil
	first := !s.monitoring()
	if s.mon.monitors == nil {
		s.mon.monitors = map[*mconn]struct{}{}
	}
	c.monitor = true
	s.mon.monitors[c] = struct{}{}
	if first {
		for _, ch := range s.chans {
			for _, side := range []*maddr{ch.init, ch.acc} {
				if side.chans[ch.id] != nil && !side.c.dead {
					s.sendFrame(side.c, &Frame{Type: TypeRevoke, Destination: side.addr, Body: RevokeBody{Channel: ch.id, Reason: RevokeMonitor}.Encode()})
				}
			}
		}
	}
	if len(s.chans) == 0 {
		s.done(c, f.Serial, 0, 0)
		return
	}
	s.mon.waiting = append(s.mon.waiting, drainWait{c: c, serial: f.Serial, deadline: time.Now().Add(drainTimeout), start: len(s.chans)})
}

// retire takes an address out of the bus's traffic without removing it:
// its names are handed over, routed calls to it fail, its channels are
// revoked (GONE).
func (s *masterState) retire(a *maddr) {
	s.dropNames(a)
	s.failSlotsTo(a)
	for _, ch := range a.chans {
		s.revoke(ch, RevokeGone)
	}
}

// drained answers the BECOME_MONITOR requests whose channels are all
// disconnected, or whose time is up; it returns how long until the next
// deadline (-1: none waiting).
func (s *masterState) drained(now time.Time) time.Duration {
	next := time.Duration(-1)
	keep := s.mon.waiting[:0]
	for _, w := range s.mon.waiting {
		left := len(s.chans)
		switch {
		case w.c.dead:
		case left == 0 || !now.Before(w.deadline):
			s.done(w.c, w.serial, uint64(w.start-left), uint64(left))
		default:
			keep = append(keep, w)
			if d := w.deadline.Sub(now); next < 0 || d < next {
				next = d
			}
		}
	}
	s.mon.waiting = keep
	return next
}

// monitorLeft is called when a monitor goes: with the last one, new
// CONNECTs are direct again.
func (s *masterState) monitorLeft(c *mconn) {
	delete(s.mon.monitors, c)
	if len(s.mon.monitors) == 0 {
		s.mon.monitors = nil
	}
}

// beginCopy starts the copy of a frame c sent, while it is handled.
func (s *masterState) beginCopy(c *mconn, f *Frame, nfds int) {
	if !s.monitoring() || c.monitor {
		return
	}
	_, memfd := f.Field(FieldMemfd)
	from := uint64(0)
	if c.primary != nil {
		from = c.primary.addr
	}
	to := uint64(AddrBus)
	if f.Type.Data() {
		to = f.Destination
	}
	s.mon.cur, s.mon.curConn, s.mon.curFrom, s.mon.curTo = f, c, from, to
	s.mon.curFDs, s.mon.curMemfd, s.mon.refused = uint16(nfds), memfd, false
	if memfd && nfds > 0 {
		s.mon.curFDs--
	}
}

// endCopy sends the copy of the handled frame, then the copies of what
// its handling sent.
func (s *masterState) endCopy() {
	f := s.mon.cur
	if f == nil {
		return
	}
	s.mon.cur = nil
	var flags uint8
	if s.mon.curMemfd {
		flags |= MonitorMemfd
	}
	if s.mon.refused {
		flags |= MonitorRefused
	}
	s.copyFrame(f, s.mon.curFrom, s.mon.curTo, s.mon.curFDs, flags)
	later, laterD := s.mon.later, s.mon.laterD
	s.mon.later, s.mon.laterD = nil, nil
	for _, b := range later {
		s.toMonitors(b)
	}
	for _, b := range laterD {
		s.dbusToMonitors(b)
	}
}

// copySent copies a frame the master sends to a non-monitor endpoint c
// (b encoded, files attached).
func (s *masterState) copySent(c *mconn, b []byte, files []*os.File) {
	if !s.monitoring() || c.monitor {
		return
	}
	f, err := Decode(b)
	if err != nil {
		return
	}
	_, memfd := f.Field(FieldMemfd)
	var flags uint8
	n := len(files)
	if memfd {
		flags |= MonitorMemfd
		n--
	}
	from := uint64(AddrBus)
	if f.Source != AddrBus {
		from = f.Source
	}
	b2 := s.encodeCopy(f, from, destOf(c), uint16(max(n, 0)), flags)
	if b2 == nil {
		return
	}
	if s.mon.cur != nil {
		s.mon.later = append(s.mon.later, b2)
		return
	}
	s.toMonitors(b2)
}

func (s *masterState) copyFrame(f *Frame, from, to uint64, nfds uint16, flags uint8) {
	if b := s.encodeCopy(f, from, to, nfds, flags); b != nil {
		s.toMonitors(b)
	}
}

// encodeCopy is f with nfds 0 and a MONITOR field (and without
// SENDER_CRED's room problem: a frame plus 40 bytes always fits).
func (s *masterState) encodeCopy(f *Frame, from, to uint64, nfds uint16, flags uint8) []byte {
	g := *f
	g.Fields = append([]Field(nil), f.Fields...)
	g.NFDs = 0
	g.SetField(FieldMonitor, MonitorInfo{From: from, To: to, Time: monotonicNow(), NFDs: nfds, Flags: flags}.Encode())
	b, err := g.MarshalBinary()
	if err != nil {
		return nil
	}
	return b
}

func (s *masterState) toMonitors(b []byte) {
	for mc := range s.mon.monitors {
		if mc.dead {
			continue
		}
		if !s.room(mc, len(b), nil) {
			mc.lost++
			continue
		}
		s.send(mc, outFrame{b: b, data: true})
	}
}

func monotonicNow() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}
