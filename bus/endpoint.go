package bus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/porter-ipc/porter/fdpass"
	"golang.org/x/sys/unix"
)

// Options tunes DialOptions.
type Options struct {
	Label string // HELLO's label; default: the base name of os.Args[0]
	NoFDs bool   // do not accept fds (default: accept)
	// NoMemfd: do not accept large bodies as sealed memfds (default:
	// accept; HELLO's ACCEPT_MEMFD). A peer then gets FDS_REFUSED for a
	// body above the inline maximum.
	NoMemfd  bool
	NoDirect bool    // take no channels: every pair with this endpoint is routed
	Routed   bool    // ask for the routed path on every CONNECT (benchmarks, tests)
	Handler  Handler // incoming calls; nil: answered with ERROR ErrorUnknownMethod
	// Logf reports what the protocol says to log (a forged frame on a
	// channel, a refused introduction); nil: log.Printf.
	Logf func(format string, args ...any)
}

// requestTimeout bounds the requests Close and Watcher.Close make, which
// take no context.
const requestTimeout = 2 * time.Second

// ErrClosed is what calls on an endpoint that was closed return; it
// matches net.ErrClosed.
var ErrClosed = fmt.Errorf("bus: endpoint closed: %w", net.ErrClosed)

// Endpoint is a connection to a bus: one master connection, the channels
// the master introduced, the calls in flight. Its methods are safe for
// concurrent use.
type Endpoint struct {
	path    string
	opts    Options
	conn    *fdpass.Conn
	out     gate // sends on conn, each bounded by its ctx
	welcome WelcomeBody
	bloom   Bloom
	rules   Rules // the master connection, as a reader
	toM     Rules // the master connection, as a writer checks
	chRules Rules // channels
	serial  atomic.Uint64
	cookie  atomic.Uint64
	ctx     context.Context // ends when the endpoint closes
	cancel  context.CancelFunc
	wg      sync.WaitGroup // readers and routed handlers

	mu        sync.Mutex
	reqs      map[uint64]*request     // control requests by serial
	calls     map[uint64]*pendingCall // routed calls by serial
	peers     map[uint64]*outPeer     // outbound path per peer address
	names     map[string]uint64       // name → owner, as last resolved
	dialing   map[string]*dialWait    // CONNECTs in progress, by dest
	channels  map[uint64]*channel     // every open channel, by id
	owned     map[string]bool         // names the primary address owns
	watchers  map[uint64]*Watcher     // by cookie
	closed    bool                    // Close was called, or the master went
	closeErr  error                   // what pending and later calls fail with
	closeOnce sync.Once
	leaving   atomic.Bool   // Close sent BYE: the master's EOF is ours
	readDone  chan struct{} // the master reader ended

	lostTotal atomic.Uint64           // the last Lost signal's total (multicast.go)
	mon       atomic.Pointer[Monitor] // set by Monitor (endpoint_monitor.go)
	monRules  Rules                   // rules with Monitor set, for a monitor's reader
}

// request is a control request waiting for its answer.
type request struct {
	t    Type
	ch   chan answer // buffered 1
	ids  []IdentityBody
	done bool
}

// answer is the master's answer to a request, or a reply to a call.
type answer struct {
	f     *Frame
	files []*os.File
	ids   []IdentityBody
	err   error
}

// pendingCall is a call awaiting its REPLY or ERROR.
type pendingCall struct {
	ch   chan answer // buffered 1
	peer uint64
}

// outPeer is the path this endpoint sends on to one peer address.
type outPeer struct {
	addr    uint64
	routed  bool
	ch      *channel // direct
	accepts uint8
}

// dialWait is a CONNECT in progress that other callers wait for.
type dialWait struct {
	done chan struct{}
	p    *outPeer
	err  error
}

// Dial joins the bus at path ("" = DefaultPath()) with the default
// options.
func Dial(path string) (*Endpoint, error) {
	return DialOptions(context.Background(), path, Options{})
}

// DialOptions joins the bus at path ("" = DefaultPath()): it connects,
// sends HELLO with the process's effective credentials and waits for
// WELCOME (a FAIL is returned as an *Error) until ctx ends.
func DialOptions(ctx context.Context, path string, o Options) (*Endpoint, error) {
	if path == "" {
		path = DefaultPath()
	}
	if o.Label == "" {
		o.Label = filepath.Base(os.Args[0])
		if len(o.Label) > MaxLabelLen {
			o.Label = o.Label[:MaxLabelLen]
		}
	}
	if err := CheckLabel(o.Label); err != nil {
		return nil, fmt.Errorf("bus: dial %s: %w", path, err)
	}
	if o.Logf == nil {
		o.Logf = log.Printf
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unixpacket", path)
	if err != nil {
		return nil, fmt.Errorf("bus: dial: %w", err)
	}
	uc := nc.(*net.UnixConn)
	conn, err := fdpass.NewConn(uc)
	if err != nil {
		return nil, fmt.Errorf("bus: dial %s: %w", path, err)
	}
	e := &Endpoint{path: path, opts: o, conn: conn, out: newGate(uc),
		reqs: map[uint64]*request{}, calls: map[uint64]*pendingCall{},
		peers: map[uint64]*outPeer{}, names: map[string]uint64{}, dialing: map[string]*dialWait{},
		channels: map[uint64]*channel{}, owned: map[string]bool{}, watchers: map[uint64]*Watcher{},
		readDone: make(chan struct{})}
	if err := e.hello(ctx, uc); err != nil {
		conn.Close()
		return nil, fmt.Errorf("bus: dial %s: %w", path, err)
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.wg.Add(1)
	go e.readMaster()
	return e, nil
}

// hello sends HELLO and reads WELCOME.
func (e *Endpoint) hello(ctx context.Context, uc *net.UnixConn) error {
	var flags uint32
	if !e.opts.NoFDs {
		flags |= HelloAcceptFDs
	}
	if e.opts.NoDirect {
		flags |= HelloNoDirect
	}
	if !e.opts.NoMemfd {
		flags |= HelloAcceptMemfd
	}
	f := &Frame{Type: TypeHello, Serial: e.serial.Add(1), Destination: AddrBus,
		Body: HelloBody{Flags: flags, Label: e.opts.Label}.Encode()}
	b, err := f.MarshalBinary()
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		uc.SetDeadline(dl)
		defer uc.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { uc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	cred := fdpass.Cred{PID: os.Getpid(), UID: os.Geteuid(), GID: os.Getegid()}
	if _, err := e.conn.SendCred(b, &cred); err != nil {
		return e.readFailAfter(err)
	}
	buf := make([]byte, DefaultMaxFrame)
	m, err := e.conn.Recv(buf, 0)
	if err != nil {
		if ctx.Err() != nil {
			return local("hello", CodeTimeout, "%v", ctx.Err())
		}
		if errors.Is(err, io.EOF) {
			return local("hello", CodePeerGone, "the master closed the connection")
		}
		return err
	}
	r := Rules{Path: PathFromMaster}
	wf, err := r.Decode(buf[:m.N], len(m.Files))
	m.Close()
	if err != nil {
		return err
	}
	if wf.Type == TypeFail {
		fb, err := ParseFail(wf.Body)
		if err != nil {
			return err
		}
		return fb.Err("hello")
	}
	w, err := ParseWelcome(wf.Body)
	if err != nil {
		return err
	}
	if wf.ReplySerial != f.Serial {
		return local("hello", CodeMalformed, "WELCOME answers serial %d, not %d", wf.ReplySerial, f.Serial)
	}
	e.welcome = w
	e.bloom, err = NewBloomParams(int(w.BloomSize), int(w.BloomK))
	if err != nil {
		return err
	}
	e.rules = w.Rules()
	e.monRules = e.rules
	e.monRules.Monitor = true
	e.toM = Rules{Path: PathToMaster, Joined: true, MaxFrame: int(w.MaxFrame), MaxFDs: int(w.MaxFDs), BloomSize: int(w.BloomSize)}
	e.chRules = Rules{Path: PathChannel, MaxFrame: int(w.MaxFrame), MaxFDs: int(w.MaxFDs), BloomSize: int(w.BloomSize)}
	return nil
}

// readFailAfter reads once more after a failed send: the FAIL that
// explains why may still be queued ("FAIL").
func (e *Endpoint) readFailAfter(err error) error {
	buf := make([]byte, DefaultMaxFrame)
	m, rerr := e.conn.Recv(buf, 0)
	if rerr != nil {
		return err
	}
	m.Close()
	r := Rules{Path: PathFromMaster}
	if f, derr := r.Decode(buf[:m.N], 0); derr == nil && f.Type == TypeFail {
		if fb, perr := ParseFail(f.Body); perr == nil {
			return fb.Err("hello")
		}
	}
	return err
}

// Address is the endpoint's primary address, as WELCOME assigned it.
func (e *Endpoint) Address() uint64 { return e.welcome.Address }

// Cred is the endpoint's credentials as the master verified them.
func (e *Endpoint) Cred() fdpass.Cred {
	return credOf(e.welcome.PID, e.welcome.UID, e.welcome.GID)
}

// Welcome is the WELCOME the master sent: the bus's parameters.
func (e *Endpoint) Welcome() WelcomeBody { return e.welcome }

// logf logs through Options.Logf.
func (e *Endpoint) logf(format string, args ...any) {
	e.opts.Logf("bus: endpoint %s: "+format, append([]any{FormatAddress(e.welcome.Address)}, args...)...)
}

// send marshals f for the master connection and sends it with files.
func (e *Endpoint) send(f *Frame, files []*os.File) error {
	return e.sendCtx(context.Background(), f, files)
}

// sendCtx is send bounded by ctx: a master that stopped reading this
// endpoint (its queues are full) holds a sender no longer than ctx.
func (e *Endpoint) sendCtx(ctx context.Context, f *Frame, files []*os.File) error {
	b, err := e.toM.Marshal(f)
	if err != nil {
		return err
	}
	if err := e.out.send(ctx, e.conn, b, files); err != nil {
		if CodeOf(err) == CodeTimeout {
			return err
		}
		return sendError(err)
	}
	return nil
}

// sendError maps a failed sendmsg to the protocol's codes.
func sendError(err error) error {
	switch {
	case errors.Is(err, fdpass.ErrTooManyRefs):
		return &Error{Op: "send", Code: CodeFDLimit, Errno: unix.ETOOMANYREFS, Text: err.Error()}
	case errors.Is(err, net.ErrClosed), errors.Is(err, os.ErrClosed):
		return ErrClosed
	}
	return &Error{Op: "send", Code: CodePeerGone, Text: err.Error()}
}

// request sends a control request and waits for its answer.
func (e *Endpoint) request(ctx context.Context, t Type, body []byte) (answer, error) {
	f := &Frame{Type: t, Serial: e.serial.Add(1), Source: e.welcome.Address, Destination: AddrBus, Body: body}
	r := &request{t: t, ch: make(chan answer, 1)}
	e.mu.Lock()
	if e.closed {
		err := e.closeErr
		e.mu.Unlock()
		return answer{}, err
	}
	e.reqs[f.Serial] = r
	e.mu.Unlock()
	if err := e.sendCtx(ctx, f, nil); err != nil {
		e.mu.Lock()
		delete(e.reqs, f.Serial)
		e.mu.Unlock()
		return answer{}, err
	}
	select {
	case a := <-r.ch:
		return a, a.err
	case <-ctx.Done():
		e.mu.Lock()
		_, waiting := e.reqs[f.Serial]
		delete(e.reqs, f.Serial)
		e.mu.Unlock()
		if !waiting { // answered meanwhile
			a := <-r.ch
			return a, a.err
		}
		return answer{}, local(t.String(), CodeTimeout, "%v", ctx.Err())
	}
}

// forget sends a request whose answer nobody waits for (DISCONNECT).
func (e *Endpoint) forget(t Type, body []byte) {
	f := &Frame{Type: t, Serial: e.serial.Add(1), Source: e.welcome.Address, Destination: AddrBus, Body: body}
	e.send(f, nil)
}

// RequestName asks for name for the primary address with flags
// (NameAllowReplacement, NameReplaceExisting, NameDoNotQueue) and returns
// DONE's value: NamePrimaryOwner, NameInQueue, NameExists or
// NameAlreadyOwner. A refusal is an *Error (DENIED, INVALID, QUOTA …).
func (e *Endpoint) RequestName(ctx context.Context, name string, flags uint32) (int, error) {
	if err := CheckName(name); err != nil {
		return 0, err
	}
	a, err := e.request(ctx, TypeRequestName, NameBody{Address: e.welcome.Address, Flags: flags, Name: name}.Encode())
	if err != nil {
		return 0, err
	}
	d, err := ParseDone(a.f.Body)
	if err != nil {
		return 0, err
	}
	if d.Value == NamePrimaryOwner || d.Value == NameAlreadyOwner {
		e.mu.Lock()
		e.owned[name] = true
		e.mu.Unlock()
	}
	return int(d.Value), nil
}

// ReleaseName gives up name (owned or queued for) and returns DONE's
// value: NameReleased, NameNonExistent or NameNotOwner.
func (e *Endpoint) ReleaseName(ctx context.Context, name string) (int, error) {
	if err := CheckName(name); err != nil {
		return 0, err
	}
	a, err := e.request(ctx, TypeReleaseName, NameBody{Address: e.welcome.Address, Name: name}.Encode())
	if err != nil {
		return 0, err
	}
	d, err := ParseDone(a.f.Body)
	if err != nil {
		return 0, err
	}
	if d.Value == NameReleased {
		e.mu.Lock()
		delete(e.owned, name)
		e.mu.Unlock()
	}
	return int(d.Value), nil
}

// List returns every address on the bus, in increasing order (LIST).
func (e *Endpoint) List(ctx context.Context) ([]IdentityBody, error) {
	a, err := e.request(ctx, TypeList, nil)
	if err != nil {
		return nil, err
	}
	return a.ids, nil
}

// Resolve returns the identity of dest: an address (":1.N") or the owner
// of a name (RESOLVE).
func (e *Endpoint) Resolve(ctx context.Context, dest string) (IdentityBody, error) {
	var rb ResolveBody
	if len(dest) > 0 && dest[0] == ':' {
		a, err := ParseAddress(dest)
		if err != nil {
			return IdentityBody{}, err
		}
		rb.Address = a
	} else {
		if err := CheckName(dest); err != nil {
			return IdentityBody{}, err
		}
		rb.Name = dest
	}
	a, err := e.request(ctx, TypeResolve, rb.Encode())
	if err != nil {
		return IdentityBody{}, err
	}
	if len(a.ids) != 1 {
		return IdentityBody{}, local("resolve", CodeMalformed, "%d identities in answer", len(a.ids))
	}
	return a.ids[0], nil
}

// Close leaves the bus: it sends END on the channels it initiated and BYE
// to the master, closes every channel and the master connection, fails
// the calls in flight with ErrClosed and waits for its goroutines
// (including Handlers in progress, whose ctx it cancels). It is
// idempotent.
func (e *Endpoint) Close() error {
	e.closeOnce.Do(func() {
		e.mu.Lock()
		var chans []*channel
		for _, c := range e.channels {
			chans = append(chans, c)
		}
		e.mu.Unlock()
		for _, c := range chans {
			c.sendEnd()
		}
		// BYE, politely: the master answers DONE and then closes.
		e.leaving.Store(true)
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		e.request(ctx, TypeBye, nil)
		cancel()
		e.shutdown(ErrClosed)
		<-e.readDone
		e.wg.Wait()
	})
	return nil
}

// shutdown ends everything once: channels closed, pending calls and
// requests failed with err, the master connection closed.
func (e *Endpoint) shutdown(err error) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	e.closeErr = err
	reqs, calls, chans, ws := e.reqs, e.calls, e.channels, e.watchers
	e.reqs, e.calls, e.channels, e.watchers = map[uint64]*request{}, map[uint64]*pendingCall{}, map[uint64]*channel{}, map[uint64]*Watcher{}
	e.peers = map[uint64]*outPeer{}
	e.mu.Unlock()
	e.cancel()
	e.conn.Close()
	for _, r := range reqs {
		r.ch <- answer{err: err}
	}
	for _, p := range calls {
		p.ch <- answer{err: err}
	}
	for _, c := range chans {
		c.close(err, false)
	}
	for _, w := range ws {
		w.end()
	}
	e.endMonitor()
}

// readMaster reads the master connection until it ends.
func (e *Endpoint) readMaster() {
	defer e.wg.Done()
	defer close(e.readDone)
	buf := make([]byte, e.welcome.MaxFrame)
	var fatal error
	for {
		m, err := e.conn.Recv(buf, int(e.welcome.MaxFDs)+1)
		if err != nil {
			if fatal == nil {
				fatal = local("read", CodePeerGone, "master connection: %v", err)
			}
			break
		}
		b := make([]byte, m.N)
		copy(b, buf[:m.N])
		f, err := e.readRules().Decode(b, len(m.Files))
		if err != nil {
			m.Close()
			e.logf("from the master: %v", err)
			fatal = local("read", CodePeerGone, "master sent a bad frame: %v", err)
			break
		}
		if ferr := e.fromMaster(f, m.Files); ferr != nil {
			fatal = ferr
		}
	}
	if e.leaving.Load() {
		fatal = ErrClosed
	}
	e.shutdown(fatal)
}

// fromMaster handles one frame from the master; it returns the error
// pending calls fail with when the master announced a fatal FAIL.
func (e *Endpoint) fromMaster(f *Frame, files []*os.File) error {
	if e.toMonitor(f, files) {
		return nil
	}
	switch f.Type {
	case TypeDone, TypeIntroduce, TypeIdentity, TypeListEnd:
		if f.Type == TypeIntroduce {
			in, err := ParseIntroduce(f.Body, f.NFDs)
			if err != nil {
				closeFiles(files)
				e.logf("INTRODUCE: %v", err)
				return nil
			}
			if in.Role == RoleAcceptor {
				e.accept(in, files)
				return nil
			}
			if !e.answer(f, answer{f: f, files: files}) {
				// Nobody waits any more (the caller's ctx ended):
				// the channel is not wanted.
				closeFiles(files)
				if in.Mode == ModeDirect {
					e.forget(TypeDisconnect, U64Body(in.Channel))
				}
			}
			return nil
		}
		closeFiles(files)
		if f.Type == TypeIdentity || f.Type == TypeListEnd {
			e.identity(f)
			return nil
		}
		e.answer(f, answer{f: f})
	case TypeFail:
		fb, err := ParseFail(f.Body)
		if err != nil {
			return nil
		}
		if e.answer(f, answer{err: fb.Err("request")}) {
			return nil
		}
		if e.routedAnswer(f, answer{err: fb.Err("call")}) {
			return nil
		}
		if fb.Code.Fatal() {
			return fb.Err("bus")
		}
		e.logf("FAIL for serial %d: %v", f.ReplySerial, fb.Err(""))
	case TypeRevoke:
		rb, err := ParseRevoke(f.Body)
		if err != nil {
			return nil
		}
		e.revoke(rb)
	case TypeReply, TypeError:
		if f.Type == TypeReply {
			var perr error
			if files, perr = e.takePayload(f, files); perr != nil {
				e.routedAnswer(f, answer{err: perr})
				return nil
			}
		}
		a := answer{f: f, files: files}
		if f.Type == TypeError {
			a = answer{err: errorOfReply(f, files)}
		}
		if !e.routedAnswer(f, a) {
			dropFrame(f, files)
		}
	case TypeCall:
		var perr error
		if files, perr = e.takePayload(f, files); perr != nil {
			e.refusedPayload(f, perr, func(rf *Frame) error { return e.send(rf, nil) }, nil)
			return nil
		}
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.serveRouted(f, files)
		}()
	case TypeSignal:
		if f.Source == AddrBus {
			e.busSignal(f)
		}
		var perr error
		if files, perr = e.takePayload(f, files); perr != nil {
			e.refusedPayload(f, perr, nil, nil)
			return nil
		}
		e.deliver(f, files, fdpass.Cred{})
	default:
		closeFiles(files)
	}
	return nil
}

// answer hands a master's answer to the request with its reply_serial,
// and reports whether one waited.
func (e *Endpoint) answer(f *Frame, a answer) bool {
	e.mu.Lock()
	r, ok := e.reqs[f.ReplySerial]
	if ok {
		delete(e.reqs, f.ReplySerial)
		a.ids = r.ids
	}
	e.mu.Unlock()
	if ok {
		r.ch <- a
	}
	return ok
}

// identity collects IDENTITY frames for LIST and RESOLVE.
func (e *Endpoint) identity(f *Frame) {
	e.mu.Lock()
	r, ok := e.reqs[f.ReplySerial]
	if !ok {
		e.mu.Unlock()
		return
	}
	if f.Type == TypeIdentity {
		id, err := ParseIdentity(f.Body)
		if err == nil {
			r.ids = append(r.ids, id)
		}
		if r.t == TypeList {
			e.mu.Unlock()
			return
		}
	}
	delete(e.reqs, f.ReplySerial)
	e.mu.Unlock()
	r.ch <- answer{f: f, ids: r.ids}
}

// routedAnswer hands a routed REPLY, ERROR or FAIL to its call.
func (e *Endpoint) routedAnswer(f *Frame, a answer) bool {
	e.mu.Lock()
	p, ok := e.calls[f.ReplySerial]
	if ok && f.Type != TypeFail && p.peer != f.Source {
		ok = false // not from the callee
	}
	if ok {
		delete(e.calls, f.ReplySerial)
	}
	e.mu.Unlock()
	if ok {
		p.ch <- a
	}
	return ok
}

// busSignal keeps the endpoint's state in step with the bus's notices.
func (e *Endpoint) busSignal(f *Frame) {
	var arg0 string
	if v, ok := f.Field(FieldArgs); ok {
		if args, err := ParseArgs(v); err == nil && len(args) > 0 && args[0].Index == 0 {
			arg0 = args[0].Value
		}
	}
	switch f.Text(FieldMember) {
	case MemberNameAcquired:
		e.mu.Lock()
		e.owned[arg0] = true
		e.mu.Unlock()
	case MemberNameLost:
		e.mu.Lock()
		delete(e.owned, arg0)
		e.mu.Unlock()
	case MemberNameOwnerChanged:
		old, _, err := ParseNameOwnerChanged(f.Body)
		if err == nil {
			e.mu.Lock()
			if e.names[arg0] == old {
				delete(e.names, arg0)
			}
			e.mu.Unlock()
		}
	case MemberLost:
		e.noteLost(f)
	case MemberEndpointGone:
		addr, _, err := ParseEndpointGone(f.Body)
		if err != nil {
			return
		}
		e.mu.Lock()
		var gone []*channel
		for _, c := range e.channels {
			if c.peer == addr {
				gone = append(gone, c)
			}
		}
		delete(e.peers, addr)
		for n, a := range e.names {
			if a == addr {
				delete(e.names, n)
			}
		}
		e.mu.Unlock()
		for _, c := range gone {
			c.close(local("call", CodePeerGone, "%s left the bus", FormatAddress(addr)), false)
		}
	}
}

// revoke closes a revoked channel (POLICY, GONE) or drains it (MONITOR).
func (e *Endpoint) revoke(rb RevokeBody) {
	e.mu.Lock()
	c := e.channels[rb.Channel]
	e.mu.Unlock()
	if c == nil {
		return
	}
	if rb.Reason == RevokeMonitor {
		c.drain()
		return
	}
	c.close(local("call", CodeRevoked, "channel %d revoked (reason %d)", rb.Channel, rb.Reason), false)
}
