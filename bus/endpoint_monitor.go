package bus

import (
	"context"
	"os"
	"sync"
	"sync/atomic"
)

// MonitorBuffer is how many Copies a Monitor holds for its reader; more
// are dropped and counted (Monitor.Dropped), never waited for.
const MonitorBuffer = 4096

// Copy is one frame a monitor saw: the frame as the master handled it
// (nfds 0, no files: a monitor receives no fds) and its MONITOR field.
type Copy struct {
	*Frame
	Info MonitorInfo
}

// Monitor receives a copy of every frame the master handles for the
// other endpoints (docs/protocol-bus.md, "Monitor"). C is closed when the
// Monitor or its endpoint closes.
type Monitor struct {
	C <-chan *Copy

	e       *Endpoint
	c       chan *Copy
	mu      sync.Mutex
	ended   bool
	dropped atomic.Uint64
}

// Monitor turns the endpoint into a monitor (BECOME_MONITOR): the policy
// decides who may (OpMonitor; default root and the master's uid, else an
// *Error with CodeDenied). The endpoint's names are released, its
// Watchers stop receiving, its channels close and the bus goes to routed
// mode while it is attached; it answers once every channel drained. From
// then on the endpoint only receives: calls and sends on it fail at the
// master. What the master could not queue for it is counted in Lost.
// There is no way back: close the Monitor (or the endpoint) to leave.
func (e *Endpoint) Monitor(ctx context.Context) (*Monitor, error) {
	c := make(chan *Copy, MonitorBuffer)
	mon := &Monitor{C: c, c: c, e: e}
	if !e.mon.CompareAndSwap(nil, mon) {
		return nil, local("monitor", CodeInvalid, "already a monitor")
	}
	// Copies may come before DONE; the reader decodes with the monitor's
	// rules from here on, which only admit more.
	if _, err := e.request(ctx, TypeBecomeMonitor, U32Body(0)); err != nil {
		e.mon.CompareAndSwap(mon, nil)
		mon.end()
		return nil, err
	}
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	if closed {
		mon.end()
	}
	return mon, nil
}

// Dropped is how many Copies were dropped because C was full.
func (m *Monitor) Dropped() uint64 { return m.dropped.Load() }

// Close leaves the bus (a monitor cannot go back) and closes C.
func (m *Monitor) Close() error {
	err := m.e.Close()
	m.end()
	return err
}

func (m *Monitor) end() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.ended {
		m.ended = true
		close(m.c)
	}
}

func (m *Monitor) put(c *Copy) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ended {
		return
	}
	select {
	case m.c <- c:
	default:
		m.dropped.Add(1)
	}
}

// readRules is how the master reader decodes: as a monitor once Monitor
// was asked for.
func (e *Endpoint) readRules() *Rules {
	if e.mon.Load() != nil {
		return &e.monRules
	}
	return &e.rules
}

// toMonitor takes a monitor's copy (a frame with a MONITOR field) and
// reports whether f was one.
func (e *Endpoint) toMonitor(f *Frame, files []*os.File) bool {
	mon := e.mon.Load()
	if mon == nil {
		return false
	}
	v, ok := f.Field(FieldMonitor)
	if !ok {
		return false
	}
	closeFiles(files) // none are sent to a monitor; never keep any
	mi, err := ParseMonitor(v)
	if err != nil {
		return true
	}
	mon.put(&Copy{Frame: f, Info: mi})
	return true
}

// endMonitor closes the Monitor's C when the endpoint shuts down.
func (e *Endpoint) endMonitor() {
	if mon := e.mon.Load(); mon != nil {
		mon.end()
	}
}
