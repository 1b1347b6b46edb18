package bus

import (
	"context"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/porter-ipc/porter/fdpass"
)

// WatchBuffer is how many Notices a Watcher holds for its reader; more
// are dropped and counted (Watcher.Dropped), never waited for.
const WatchBuffer = 256

// Notice is a delivered signal: a multicast one that a Watcher's rules
// select, or a unicast one sent to this endpoint. Its Files belong to
// the receiver.
type Notice struct {
	*Message
	Sender uint64      // the source address; AddrBus (1) for the bus's own
	Cred   fdpass.Cred // verified (SENDER_CRED or the channel's); zero for the bus
}

// Watcher receives the signals one match selects (ADD_MATCH). C is
// closed when the Watcher or its endpoint closes.
type Watcher struct {
	C <-chan *Notice

	e       *Endpoint
	cookie  uint64
	sender  uint64
	rules   []Rule
	c       chan *Notice
	mu      sync.Mutex
	ended   bool
	dropped atomic.Uint64
}

// Watch subscribes to the signals from sender (0: anyone; AddrBus: the
// bus's notices, such as NameOwnerChanged and EndpointGone; else an
// address) that match every rule (ADD_MATCH with the rules' bloom). The
// same rules also select the unicast signals sent to this endpoint.
func (e *Endpoint) Watch(ctx context.Context, sender uint64, rules ...Rule) (*Watcher, error) {
	if err := CheckRules(rules); err != nil {
		return nil, err
	}
	c := make(chan *Notice, WatchBuffer)
	w := &Watcher{C: c, c: c, e: e, cookie: e.cookie.Add(1), sender: sender, rules: append([]Rule(nil), rules...)}
	e.mu.Lock()
	if e.closed {
		err := e.closeErr
		e.mu.Unlock()
		return nil, err
	}
	e.watchers[w.cookie] = w // before the DONE: notices may precede it
	e.mu.Unlock()
	body := AddMatchBody{Cookie: w.cookie, Sender: sender, Bloom: MatchBloom(e.bloom, rules), Rules: rules}.Encode()
	if _, err := e.request(ctx, TypeAddMatch, body); err != nil {
		e.mu.Lock()
		delete(e.watchers, w.cookie)
		e.mu.Unlock()
		w.end()
		return nil, err
	}
	return w, nil
}

// Close removes the match (REMOVE_MATCH) and closes C. Notices still in C
// are closed with it.
func (w *Watcher) Close() error {
	e := w.e
	e.mu.Lock()
	_, ok := e.watchers[w.cookie]
	delete(e.watchers, w.cookie)
	closed := e.closed
	e.mu.Unlock()
	w.end()
	for n := range w.c {
		n.Close()
	}
	if !ok || closed {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	_, err := e.request(ctx, TypeRemoveMatch, U64Body(w.cookie))
	return err
}

// Dropped is how many Notices were dropped because C was full.
func (w *Watcher) Dropped() uint64 { return w.dropped.Load() }

// end closes C once.
func (w *Watcher) end() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.ended {
		w.ended = true
		close(w.c)
	}
}

// put queues n without waiting; false when it was not taken.
func (w *Watcher) put(n *Notice) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ended {
		return false
	}
	select {
	case w.c <- n:
		return true
	default:
		w.dropped.Add(1)
		return false
	}
}

// deliver hands a signal to every Watcher that selects it. The first
// taker gets the Files; the others get the Message without them. When
// none takes it its files are closed.
func (e *Endpoint) deliver(f *Frame, files []*os.File, cred fdpass.Cred) {
	if v, ok := f.Field(FieldSenderCred); ok {
		if sc, err := ParseSenderCred(v); err == nil {
			cred = credOf(sc.PID, sc.UID, sc.GID)
		}
	}
	e.mu.Lock()
	var ws []*Watcher
	for _, w := range e.watchers {
		if w.selects(f) {
			ws = append(ws, w)
		}
	}
	e.mu.Unlock()
	taken := false
	for _, w := range ws {
		m := messageOf(f, nil)
		if !taken {
			m.Files = files
		}
		if w.put(&Notice{Message: m, Sender: f.Source, Cred: cred}) && !taken {
			taken = true
		}
	}
	if !taken {
		closeFiles(files)
	}
}

// selects is the exact test of a match on a signal (docs/protocol-bus.md,
// "Delivery, exactly"), without SENDER_NAME, which needs the master's
// registry: that rule is left to the master.
func (w *Watcher) selects(f *Frame) bool {
	if w.sender != AddrNone && w.sender != f.Source {
		return false
	}
	var args []Arg
	if v, ok := f.Field(FieldArgs); ok {
		args, _ = ParseArgs(v)
	}
	arg := func(i uint8) (string, bool) {
		for _, a := range args {
			if a.Index == i {
				return a.Value, true
			}
		}
		return "", false
	}
	path := f.Text(FieldPath)
	for _, r := range w.rules {
		switch r.Kind {
		case RulePath:
			if path != r.Value {
				return false
			}
		case RulePathNamespace:
			if r.Value != "/" && path != r.Value && !strings.HasPrefix(path, r.Value+"/") {
				return false
			}
		case RuleInterface:
			if f.Text(FieldInterface) != r.Value {
				return false
			}
		case RuleMember:
			if f.Text(FieldMember) != r.Value {
				return false
			}
		case RuleArg:
			if v, ok := arg(r.Index); !ok || v != r.Value {
				return false
			}
		case RuleArgPath:
			v, ok := arg(r.Index)
			if !ok || !(v == r.Value ||
				strings.HasSuffix(v, "/") && strings.HasPrefix(r.Value, v) ||
				strings.HasSuffix(r.Value, "/") && strings.HasPrefix(v, r.Value)) {
				return false
			}
		case RuleArg0Namespace:
			v, ok := arg(0)
			if !ok || !(v == r.Value || strings.HasPrefix(v, r.Value+".")) {
				return false
			}
		}
	}
	return true
}
