package bus_test

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/porter-ipc/porter/bus"
	"github.com/porter-ipc/porter/internal/dbuspeer"
	"golang.org/x/sys/unix"
)

// The scale benchmarks (issue 11, "10,000 endpoints joined: the cost of
// one join and one death notice to 1,000 watchers"), on porter's bus
// (its master a child process, as in the other BusMaster rows),
// dbus-broker and dbus-daemon, all under dbuspeer.Place.
//
// The bus holds scaleEndpoints joined endpoints, held by this process
// and idle but for the watchers among them. A watcher of a name asks
// for the bus's NameOwnerChanged signals with arg0 = that name: on
// porter a match with sender 1 (the bus) and the rules INTERFACE
// org.freedesktop.DBus, MEMBER NameOwnerChanged, ARG 0 = the name; on
// D-Bus AddMatch("type='signal',sender='org.freedesktop.DBus',
// interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='…'").
// One op: a new endpoint joins (porter: connect, HELLO, WELCOME; D-Bus:
// connect, AUTH, Hello), takes scaleName (REQUEST_NAME / RequestName
// with DO_NOT_QUEUE) and dies (closes its socket without BYE), and the op
// ends when every watcher of scaleName has read both notices: the name
// owned, and the name without owner. Three populations:
//
//   - Watched: scaleEndpoints endpoints, scaleWatchers of them watching
//     scaleName; an op is 2 × scaleWatchers deliveries.
//   - Other: scaleEndpoints endpoints, scaleWatchers of them watching
//     other names (each its own), plus one probe watching scaleName, by
//     which the op knows the bus handled the death. Its cost should be
//     Empty's: the non-matching watchers and the idle endpoints must cost
//     nothing per join or death (and any notice they read fails the run).
//   - Empty: the probe alone.
//
// All the clients are lean: porter's speak frames with raw syscalls,
// D-Bus's are dbuspeer.Conn, and the watchers are read by one epoll loop
// (dbuspeer.Poller) in this goroutine, so the figures are the buses', not
// a client library's. Metrics: bus-µs/op (master-µs/op for porter) the
// bus process's CPU per op, from /proc; acquire-p50-µs from the start of
// the join to the last watcher having read the owner notice;
// gone-p50-µs and gone-p99-µs from the close to the last watcher having
// read the notice that the name lost its owner.

const (
	scaleEndpoints = 10000
	scaleWatchers  = 1000
	scaleName      = "com.example.X"
	scaleWait      = 10 * time.Second // a notice missing this long fails the run
)

type scalePop int

const (
	popWatched scalePop = iota
	popOther
	popEmpty
)

// scaleBus is how the scenario drives one bus.
type scaleBus struct {
	pid  int
	unit string // of the bus's CPU per op
	// idle joins an endpoint that does nothing until its close.
	idle func() (close func(), err error)
	// watch joins an endpoint watching name; p reads it and seen gets
	// each NameOwnerChanged (acquired: it names a new owner).
	watch func(p *dbuspeer.Poller, name string, seen func(name string, acquired bool)) (close func(), err error)
	// take joins an endpoint that takes scaleName; die closes its
	// socket.
	take func() (die func(), err error)
}

// BenchmarkBusScaleWatched: porter, scaleEndpoints joined, scaleWatchers
// watching the name taken and dropped (see the scale benchmarks above).
func BenchmarkBusScaleWatched(b *testing.B) { benchScale(b, porterScale(b), popWatched) }

// BenchmarkBusScaleOther: porter, the watchers watch other names.
func BenchmarkBusScaleOther(b *testing.B) { benchScale(b, porterScale(b), popOther) }

// BenchmarkBusScaleEmpty: porter, the probe watcher alone.
func BenchmarkBusScaleEmpty(b *testing.B) { benchScale(b, porterScale(b), popEmpty) }

// BenchmarkDBusBrokerScaleWatched is BenchmarkBusScaleWatched on dbus-broker.
func BenchmarkDBusBrokerScaleWatched(b *testing.B) {
	benchScale(b, dbusScale(b, dbusBroker), popWatched)
}

// BenchmarkDBusBrokerScaleOther is BenchmarkBusScaleOther on dbus-broker.
func BenchmarkDBusBrokerScaleOther(b *testing.B) { benchScale(b, dbusScale(b, dbusBroker), popOther) }

// BenchmarkDBusBrokerScaleEmpty is BenchmarkBusScaleEmpty on dbus-broker.
func BenchmarkDBusBrokerScaleEmpty(b *testing.B) { benchScale(b, dbusScale(b, dbusBroker), popEmpty) }

// BenchmarkDBusDaemonScaleWatched is BenchmarkBusScaleWatched on dbus-daemon.
func BenchmarkDBusDaemonScaleWatched(b *testing.B) {
	benchScale(b, dbusScale(b, dbusDaemon), popWatched)
}

// BenchmarkDBusDaemonScaleOther is BenchmarkBusScaleOther on dbus-daemon.
func BenchmarkDBusDaemonScaleOther(b *testing.B) { benchScale(b, dbusScale(b, dbusDaemon), popOther) }

// BenchmarkDBusDaemonScaleEmpty is BenchmarkBusScaleEmpty on dbus-daemon.
func BenchmarkDBusDaemonScaleEmpty(b *testing.B) { benchScale(b, dbusScale(b, dbusDaemon), popEmpty) }

func benchScale(b *testing.B, sb scaleBus, pop scalePop) {
	p, err := dbuspeer.NewPoller()
	if err != nil {
		b.Fatal(err)
	}
	var closers []func()
	nwatch := 0 // closers[:nwatch] are the watchers'
	base := busFDs(b, sb.pid)
	defer func() {
		// The watchers go first, and the bus handles their going before
		// the idle endpoints go: otherwise each idle endpoint's end is a
		// notice checked against up to 1,000 matches (dbus-daemon checks
		// them one by one), and the bus is still at it when told to stop.
		for i, c := range closers {
			if i == nwatch {
				settle(b, sb.pid, base+len(closers)-nwatch)
			}
			c()
		}
		settle(b, sb.pid, base)
		p.Close()
	}()
	var acquired, gone, stray int
	seen := func(name string, acq bool) {
		switch {
		case name != scaleName:
			stray++
		case acq:
			acquired++
		default:
			gone++
		}
	}
	watchers, others, idle := scaleWatchers, 0, scaleEndpoints-scaleWatchers
	switch pop {
	case popOther:
		watchers, others, idle = 1, scaleWatchers, scaleEndpoints-scaleWatchers
	case popEmpty:
		watchers, idle = 1, 0
	}
	add := func(what string, close func(), err error) {
		if err != nil {
			b.Fatalf("%s, after %d endpoints: %v", what, len(closers), err)
		}
		closers = append(closers, close)
	}
	for range watchers {
		c, err := sb.watch(p, scaleName, seen)
		add("watcher", c, err)
	}
	for i := range others {
		c, err := sb.watch(p, "com.example.Other"+strconv.Itoa(i), seen)
		add("watcher of another name", c, err)
	}
	nwatch = len(closers)
	for range idle {
		c, err := sb.idle()
		add("idle endpoint", c, err)
	}
	// wait reads the watchers until *n reaches want.
	wait := func(n *int, what string) {
		for *n < watchers {
			k, err := p.Wait(scaleWait)
			if err != nil {
				b.Fatal(err)
			}
			if k == 0 {
				b.Fatalf("after %v, %d of %d watchers saw %s %s", scaleWait, *n, watchers, scaleName, what)
			}
		}
		*n -= watchers
	}
	op := func() (acq, dead time.Duration) {
		t0 := time.Now()
		die, err := sb.take()
		if err != nil {
			b.Fatal(err)
		}
		wait(&acquired, "owned")
		t1 := time.Now()
		die()
		wait(&gone, "without owner")
		return t1.Sub(t0), time.Since(t1)
	}
	for range 20 { // warm the bus up
		op()
	}
	acqLat := make([]time.Duration, 0, b.N)
	goneLat := make([]time.Duration, 0, b.N)
	cpu := meterCPU(b, sb.pid)
	b.ResetTimer()
	for range b.N {
		a, g := op()
		acqLat = append(acqLat, a)
		goneLat = append(goneLat, g)
	}
	b.StopTimer()
	cpu.report(b, sb.unit)
	b.ReportMetric(pct(acqLat, 50), "acquire-p50-µs")
	b.ReportMetric(pct(goneLat, 50), "gone-p50-µs")
	b.ReportMetric(pct(goneLat, 99), "gone-p99-µs")
	if stray > 0 {
		b.Fatalf("watchers read %d NameOwnerChanged notices not about %s, or malformed", stray, scaleName)
	}
	if acquired != 0 || gone != 0 {
		b.Fatalf("%d owner and %d no-owner notices more than the watchers", acquired, gone)
	}
}

// busFDs counts the fds the bus process pid has open.
func busFDs(b *testing.B, pid int) int {
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		b.Fatal(err)
	}
	return len(ents)
}

// settle waits until the bus process pid has at most want fds open,
// and a few more (dbus-daemon keeps 4 it opened for its first clients):
// it has handled the ends of the connections closed.
func settle(b *testing.B, pid, want int) {
	want += 16
	deadline := time.Now().Add(time.Minute)
	for n := busFDs(b, pid); n > want; n = busFDs(b, pid) {
		if time.Now().After(deadline) {
			b.Fatalf("the bus still has %d fds open a minute after its clients closed, want %d", n, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pct is the q-th percentile of d in µs.
func pct(d []time.Duration, q int) float64 {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return float64(s[(len(s)-1)*q/100].Nanoseconds()) / 1e3
}

// dbusScale starts a peer bus for the scale scenario.
func dbusScale(b *testing.B, pr peer) scaleBus {
	p := startPeer(b, pr)
	return scaleBus{
		pid:  p.PID,
		unit: "bus-µs/op",
		idle: func() (func(), error) {
			c, err := dbuspeer.Dial(p.Path)
			if err != nil {
				return nil, err
			}
			return func() { c.Close() }, nil
		},
		watch: func(pl *dbuspeer.Poller, name string, seen func(string, bool)) (func(), error) {
			c, err := dbuspeer.Dial(p.Path)
			if err != nil {
				return nil, err
			}
			if err := c.AddMatch(dbuspeer.NameOwnerChangedRule(name)); err != nil {
				c.Close()
				return nil, err
			}
			err = pl.AddConn(c, func(m *dbuspeer.Message) {
				defer m.Close()
				if m.Type != dbuspeer.TypeSignal || m.Member != "NameOwnerChanged" {
					return
				}
				n, _, owner, err := m.NameOwnerChanged()
				if err != nil {
					n = err.Error() // counted as a stray
				}
				seen(n, owner != "")
			})
			if err != nil {
				c.Close()
				return nil, err
			}
			return func() { c.Close() }, nil
		},
		take: func() (func(), error) {
			c, err := dbuspeer.Dial(p.Path)
			if err != nil {
				return nil, err
			}
			if err := c.RequestName(scaleName); err != nil {
				c.Close()
				return nil, err
			}
			return func() { c.Close() }, nil
		},
	}
}

// porterScale starts a master child for the scale scenario.
func porterScale(b *testing.B) scaleBus {
	m := startMaster(b)
	return scaleBus{
		pid:  m.pid,
		unit: "master-µs/op",
		idle: func() (func(), error) {
			l, err := leanJoin(m.path)
			if err != nil {
				return nil, err
			}
			return l.close, nil
		},
		watch: func(pl *dbuspeer.Poller, name string, seen func(string, bool)) (func(), error) {
			l, err := leanJoin(m.path)
			if err != nil {
				return nil, err
			}
			rules := []bus.Rule{{Kind: bus.RuleInterface, Value: bus.DBusInterface},
				{Kind: bus.RuleMember, Value: bus.MemberNameOwnerChanged}, {Kind: bus.RuleArg, Value: name}}
			body := bus.AddMatchBody{Cookie: 1, Sender: bus.AddrBus, Bloom: bus.MatchBloom(l.bloom, rules), Rules: rules}
			if _, err := l.request(bus.TypeAddMatch, body.Encode()); err != nil {
				l.close()
				return nil, err
			}
			if err := pl.Add(l.fd, func() error { return l.readReady(seen) }); err != nil {
				l.close()
				return nil, err
			}
			return l.close, nil
		},
		take: func() (func(), error) {
			l, err := leanJoin(m.path)
			if err != nil {
				return nil, err
			}
			d, err := l.request(bus.TypeRequestName, bus.NameBody{Address: l.addr, Flags: bus.NameDoNotQueue, Name: scaleName}.Encode())
			if err == nil && d.Value != bus.NamePrimaryOwner {
				err = fmt.Errorf("REQUEST_NAME %s: DONE %d, not the primary owner", scaleName, d.Value)
			}
			if err != nil {
				l.close()
				return nil, err
			}
			return l.close, nil
		},
	}
}

// leanEP is a porter endpoint that speaks frames with raw syscalls on a
// blocking socket (reads time out after scaleWait), as dbuspeer.Conn
// speaks D-Bus: the bus's cost without the endpoint library's.
type leanEP struct {
	fd     int
	addr   uint64
	serial uint64
	bloom  bus.Bloom
	buf    []byte
	oob    []byte
}

// leanJoin connects to the master at path, sends HELLO with the
// process's credentials and reads WELCOME.
func leanJoin(path string) (*leanEP, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("lean join %s: socket: %w", path, err)
	}
	l := &leanEP{fd: fd, buf: make([]byte, bus.DefaultMaxFrame), oob: make([]byte, unix.CmsgSpace(4*bus.MaxMaxFDs))}
	tv := unix.NsecToTimeval(scaleWait.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		l.close()
		return nil, fmt.Errorf("lean join %s: SO_RCVTIMEO: %w", path, err)
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		l.close()
		return nil, fmt.Errorf("lean join %s: connect: %w", path, err)
	}
	l.serial++
	hello, err := (&bus.Frame{Type: bus.TypeHello, Serial: l.serial, Destination: bus.AddrBus,
		Body: bus.HelloBody{Label: "scale"}.Encode()}).MarshalBinary()
	if err != nil {
		l.close()
		return nil, err
	}
	cred := unix.UnixCredentials(&unix.Ucred{Pid: int32(os.Getpid()), Uid: uint32(os.Geteuid()), Gid: uint32(os.Getegid())})
	if err := unix.Sendmsg(fd, hello, cred, nil, 0); err != nil {
		l.close()
		return nil, fmt.Errorf("lean join %s: HELLO: %w", path, err)
	}
	f, err := l.read(0)
	if err == nil && f.Type != bus.TypeWelcome {
		err = fmt.Errorf("answer to HELLO: %v %q", f.Type, f.Body)
	}
	var w bus.WelcomeBody
	if err == nil {
		w, err = bus.ParseWelcome(f.Body)
	}
	if err == nil {
		l.addr = w.Address
		l.bloom, err = bus.NewBloomParams(int(w.BloomSize), int(w.BloomK))
	}
	if err != nil {
		l.close()
		return nil, fmt.Errorf("lean join %s: %w", path, err)
	}
	return l, nil
}

func (l *leanEP) close() { unix.Close(l.fd) }

// read reads one frame (flags: 0 or MSG_DONTWAIT); fds that came with it
// are closed.
func (l *leanEP) read(flags int) (*bus.Frame, error) {
	for {
		n, oobn, _, _, err := unix.Recvmsg(l.fd, l.buf, l.oob, flags|unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read: %w", err)
		}
		if oobn > 0 {
			if msgs, err := unix.ParseSocketControlMessage(l.oob[:oobn]); err == nil {
				for i := range msgs {
					if fds, err := unix.ParseUnixRights(&msgs[i]); err == nil {
						for _, fd := range fds {
							unix.Close(fd)
						}
					}
				}
			}
		}
		if n == 0 {
			return nil, fmt.Errorf("read: the master closed the connection")
		}
		return bus.Decode(l.buf[:n])
	}
}

// request sends a control request and reads until its DONE (signals in
// between are dropped); a FAIL is an error.
func (l *leanEP) request(t bus.Type, body []byte) (bus.DoneBody, error) {
	l.serial++
	b, err := (&bus.Frame{Type: t, Serial: l.serial, Source: l.addr, Destination: bus.AddrBus, Body: body}).MarshalBinary()
	if err != nil {
		return bus.DoneBody{}, err
	}
	if err := unix.Sendmsg(l.fd, b, nil, nil, 0); err != nil {
		return bus.DoneBody{}, fmt.Errorf("%v: %w", t, err)
	}
	for {
		f, err := l.read(0)
		if err != nil {
			return bus.DoneBody{}, fmt.Errorf("%v: %w", t, err)
		}
		if f.ReplySerial != l.serial {
			continue
		}
		switch f.Type {
		case bus.TypeDone:
			return bus.ParseDone(f.Body)
		case bus.TypeFail:
			fb, err := bus.ParseFail(f.Body)
			if err != nil {
				return bus.DoneBody{}, err
			}
			return bus.DoneBody{}, fb.Err(t.String())
		}
	}
}

// readReady reads the frames waiting, without blocking, and passes each
// NameOwnerChanged to seen.
func (l *leanEP) readReady(seen func(string, bool)) error {
	for {
		f, err := l.read(unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) {
			return nil
		}
		if err != nil {
			return err
		}
		if f.Type != bus.TypeSignal || f.Source != bus.AddrBus || f.Text(bus.FieldMember) != bus.MemberNameOwnerChanged {
			continue
		}
		v, _ := f.Field(bus.FieldArgs)
		args, err := bus.ParseArgs(v)
		if err != nil || len(args) == 0 {
			return fmt.Errorf("NameOwnerChanged without arg0: %v", err)
		}
		_, owner, err := bus.ParseNameOwnerChanged(f.Body)
		if err != nil {
			return err
		}
		seen(args[0].Value, owner != 0)
	}
}
