package bus

import (
	"context"
	"encoding/binary"
)

// Publish sends m as a multicast SIGNAL (destination 0) through the
// master, with the BLOOM of its properties (SignalBloom: PATH, its
// prefixes, INTERFACE, MEMBER and m.Args, which go as ARGS). Every
// endpoint whose Watcher selects it, and whom the policy lets this one
// reach, receives it once. m needs Path, Interface and Member; m.Files
// are borrowed (the master passes a duplicate to each receiver).
//
// Publish returns once the master connection took the frame: a multicast
// has no answer. A refusal the master sends later (DENIED, TOO_LARGE) is
// reported through Options.Logf. A receiver that could not take its copy
// is told by a Lost signal, not the sender (Endpoint.Lost).
func (e *Endpoint) Publish(ctx context.Context, m *Message) error {
	if m == nil {
		return local("publish", CodeInvalid, "no message")
	}
	if m.Path == "" || m.Interface == "" {
		return local("publish", CodeInvalid, "a signal needs a path and an interface")
	}
	if err := CheckMember(m.Member); err != nil {
		return err
	}
	f, err := m.dataFrame(TypeSignal, "")
	if err != nil {
		return err
	}
	sig, err := SignalOf(f)
	if err != nil {
		return err
	}
	f.Fields = append(f.Fields, Field{Code: FieldBloom, Value: SignalBloom(e.bloom, sig)})
	f.Serial = e.serial.Add(1)
	f.Source = e.welcome.Address
	f.Destination = AddrNone
	e.mu.Lock()
	closed, cerr := e.closed, e.closeErr
	e.mu.Unlock()
	if closed {
		return cerr
	}
	return e.sendCtx(ctx, f, m.Files)
}

// Lost is how many frames the master could not queue for this endpoint
// (multicast signals, and monitor copies for a monitor) because its queue
// at the master was full, in total, as the last Lost signal from the bus
// said. The Lost signal itself is also delivered to the Watchers whose
// rules select it (sender AddrBus, member MemberLost). Frames a Watcher
// dropped because its reader was slow are counted apart, in
// Watcher.Dropped.
func (e *Endpoint) Lost() uint64 { return e.lostTotal.Load() }

// noteLost records the total of a Lost signal from the bus.
func (e *Endpoint) noteLost(f *Frame) {
	if len(f.Body) >= 16 {
		e.lostTotal.Store(binary.LittleEndian.Uint64(f.Body[8:]))
	}
}
