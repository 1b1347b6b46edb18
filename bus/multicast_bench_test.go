package bus_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/porter-ipc/porter/bus"
	"github.com/porter-ipc/porter/internal/dbuspeer"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// The multicast rows (issue 11): one publisher, N subscribers whose match
// selects every signal, the bus in a child process, the subscribers in
// subscriber processes (this test binary again: one subscriber per
// process up to 8, then subsPerProc), everything under dbuspeer.Place.
// The publisher sends in windows of publishWindow signals and waits for
// every subscriber process to count each delivery of the window
// (dbuspeer.Group) before the next, so no bus drops (porter's per-sender
// share is 256 frames, dbus-broker's quotas are bytes) and the figure is
// sustained delivery, not queueing. deliveries/s counts signals received,
// summed over the subscribers; master-µs/delivery (bus-µs/delivery for
// the peers, relay-µs/delivery for the raw relay) is the bus process's
// CPU time over the timed loop per delivery; subs-µs/delivery is the
// subscriber processes' and pub-µs/delivery this process's (the publisher
// and the harness), so that on one CPU the three add up to about the time
// per delivery, and a slow client is not taken for a slow bus.

const publishWindow = 64

// BenchmarkBusPublish8: 8 subscribers, each in its own process.
func BenchmarkBusPublish8(b *testing.B) { benchBusPublish(b, 8, -1) }

// BenchmarkBusPublish100: 100 subscribers, subsPerProc(100) per process.
func BenchmarkBusPublish100(b *testing.B) { benchBusPublish(b, 100, -1) }

// BenchmarkBusPublish1000: 1,000 subscribers, subsPerProc(1000) per process.
func BenchmarkBusPublish1000(b *testing.B) { benchBusPublish(b, 1000, -1) }

// BenchmarkBusPublish1000Match8: 1,000 subscribers with an INTERFACE and
// MEMBER match, of which 8 select the published signal and 992 another
// member: its cost per delivery should be near BenchmarkBusPublish8's.
func BenchmarkBusPublish1000Match8(b *testing.B) { benchBusPublish(b, 1000, 8) }

// BenchmarkDBusBrokerPublish8 is BenchmarkBusPublish8 on dbus-broker.
func BenchmarkDBusBrokerPublish8(b *testing.B) { benchPeerPublish(b, dbusBroker, 8, -1) }

// BenchmarkDBusBrokerPublish100 is BenchmarkBusPublish100 on dbus-broker.
func BenchmarkDBusBrokerPublish100(b *testing.B) { benchPeerPublish(b, dbusBroker, 100, -1) }

// BenchmarkDBusBrokerPublish1000 is BenchmarkBusPublish1000 on dbus-broker.
func BenchmarkDBusBrokerPublish1000(b *testing.B) { benchPeerPublish(b, dbusBroker, 1000, -1) }

// BenchmarkDBusBrokerPublish1000Match8 is BenchmarkBusPublish1000Match8 on dbus-broker.
func BenchmarkDBusBrokerPublish1000Match8(b *testing.B) { benchPeerPublish(b, dbusBroker, 1000, 8) }

// BenchmarkDBusDaemonPublish8 is BenchmarkBusPublish8 on dbus-daemon.
func BenchmarkDBusDaemonPublish8(b *testing.B) { benchPeerPublish(b, dbusDaemon, 8, -1) }

// BenchmarkDBusDaemonPublish100 is BenchmarkBusPublish100 on dbus-daemon.
func BenchmarkDBusDaemonPublish100(b *testing.B) { benchPeerPublish(b, dbusDaemon, 100, -1) }

// BenchmarkDBusDaemonPublish1000 is BenchmarkBusPublish1000 on dbus-daemon.
func BenchmarkDBusDaemonPublish1000(b *testing.B) { benchPeerPublish(b, dbusDaemon, 1000, -1) }

// BenchmarkDBusDaemonPublish1000Match8 is BenchmarkBusPublish1000Match8 on dbus-daemon.
func BenchmarkDBusDaemonPublish1000Match8(b *testing.B) { benchPeerPublish(b, dbusDaemon, 1000, 8) }

// BenchmarkRawFanout8 is the floor of the 8-subscriber rows: this process
// writes each window's rawPacket-byte packets to 8 SOCK_SEQPACKET sockets,
// each socket's in one sendmmsg (so each reader wakes once per window, as
// a batching bus can do at best), each socket read packet by packet by
// its own subscriber process. No bus that delivers one packet per
// delivery does better than one process writing each copy itself.
func BenchmarkRawFanout8(b *testing.B) { benchRaw(b, false) }

// BenchmarkRawRelay8: the publisher writes each packet once to a relay
// process, which reads what has come (up to a window) and writes it to 8
// SOCK_SEQPACKET sockets, one sendmmsg each, read by 8 subscriber
// processes: what a bus does minus decoding, matching, policy and
// queueing. relay-µs/delivery is the relay's CPU time per delivery.
func BenchmarkRawRelay8(b *testing.B) { benchRaw(b, true) }

// rawPacket is the raw rows' packet size, near porter's frame of
// benchSignal.
const rawPacket = 128

var benchSignal = bus.Message{Path: "/org/porter/Bench", Interface: "org.porter.Bench", Member: "Tick",
	Signature: "s", Body: dbuspeer.StringBody("0123456789abcdef")}

// otherMember is the member the subscribers that must not match ask for.
const otherMember = "Tock"

// Child helper names and their environment.
const (
	subsChild  = "bus-bench-subs"
	relayChild = "bus-bench-relay"

	envKind  = "PORTER_BENCH_KIND"  // porter, dbus or raw
	envPath  = "PORTER_BENCH_PATH"  // the bus's socket
	envSubs  = "PORTER_BENCH_SUBS"  // subscribers in this process
	envMatch = "PORTER_BENCH_MATCH" // of which this many ask for INTERFACE+MEMBER Tick, the others for Tock; absent: INTERFACE only
)

func init() {
	switch os.Getenv(testutil.ChildEnv) {
	case subsChild:
		os.Exit(runSubs())
	case relayChild:
		os.Exit(runRelay())
	}
}

// subsPerProc is how many subscribers share a subscriber process.
func subsPerProc(n int) int {
	switch {
	case n <= 8:
		return 1
	case n <= 100:
		return 5
	}
	return 20
}

// layout spreads n subscribers over processes, match of them (−1: all,
// with an INTERFACE match) selecting the signal: one spread to each
// process in turn. It returns each process's subscribers and matching ones.
func layout(n, match int) (subs, matching []int) {
	per := subsPerProc(n)
	procs := (n + per - 1) / per
	subs, matching = make([]int, procs), make([]int, procs)
	for i := range n {
		subs[i%procs]++
	}
	if match < 0 {
		copy(matching, subs)
		return subs, matching
	}
	for i := range match {
		matching[i%procs]++
	}
	return subs, matching
}

// startSubs starts the subscriber processes of kind on the bus at path.
func startSubs(b *testing.B, kind, path string, n, match int) *dbuspeer.Group {
	b.Helper()
	subs, matching := layout(n, match)
	var procs []dbuspeer.Sub
	for i := range subs {
		cmd := testutil.Child(b, subsChild, -1, -1)
		cmd.Env = append(cmd.Env, envKind+"="+kind, envPath+"="+path, envSubs+"="+strconv.Itoa(subs[i]))
		if match >= 0 {
			cmd.Env = append(cmd.Env, envMatch+"="+strconv.Itoa(matching[i]))
		}
		procs = append(procs, dbuspeer.Sub{Cmd: cmd, Per: int64(matching[i])})
	}
	g, err := dbuspeer.StartGroup(procs)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := g.Close(); err != nil {
			b.Error(err)
		}
	})
	return g
}

// runPublish warms up with one window, then publishes b.N messages in
// windows through send, waiting for the group after each; it reports
// deliveries/s and the CPU time of process pid (if not 0) per delivery
// as unit.
func runPublish(b *testing.B, g *dbuspeer.Group, pid int, unit string, send func(k int)) {
	b.Helper()
	var sent int64
	window := func(k int) int64 {
		sent += int64(k)
		if err := g.Ask(sent); err != nil {
			b.Fatal(err)
		}
		send(k)
		d, err := g.Wait()
		if err != nil {
			b.Fatal(err)
		}
		return d
	}
	start := window(publishWindow)
	var cpu *cpuMeter
	if pid != 0 {
		cpu = meterCPU(b, pid)
	}
	subsCPU := groupCPU(b, g)
	self := meterCPU(b, os.Getpid())
	t0 := time.Now()
	b.ResetTimer()
	end := start
	for left := b.N; left > 0; left -= publishWindow {
		end = window(min(left, publishWindow))
	}
	b.StopTimer()
	el := time.Since(t0)
	d := end - start
	b.ReportMetric(float64(d)/el.Seconds(), "deliveries/s")
	if cpu != nil {
		t, err := dbuspeer.CPUTime(cpu.pid)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64((t-cpu.start).Nanoseconds())/1e3/float64(d), unit)
	}
	b.ReportMetric(float64((groupCPU(b, g)-subsCPU).Nanoseconds())/1e3/float64(d), "subs-µs/delivery")
	t, err := dbuspeer.CPUTime(self.pid)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64((t-self.start).Nanoseconds())/1e3/float64(d), "pub-µs/delivery")
}

// groupCPU is the CPU time of g's subscriber processes, summed.
func groupCPU(b *testing.B, g *dbuspeer.Group) time.Duration {
	b.Helper()
	var sum time.Duration
	for _, pid := range g.PIDs() {
		t, err := dbuspeer.CPUTime(pid)
		if err != nil {
			b.Fatal(err)
		}
		sum += t
	}
	return sum
}

func benchBusPublish(b *testing.B, n, match int) {
	m := startMaster(b)
	ctx := context.Background()
	g := startSubs(b, "porter", m.path, n, match)
	pub, err := bus.DialOptions(ctx, m.path, bus.Options{Label: "publisher", NoFDs: true})
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	runPublish(b, g, m.pid, "master-µs/delivery", func(k int) {
		for range k {
			msg := benchSignal
			if err := pub.Publish(ctx, &msg); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func benchPeerPublish(b *testing.B, pr peer, n, match int) {
	if err := dbuspeer.RaiseNoFile(); err != nil {
		b.Fatal(err)
	}
	p := startPeer(b, pr)
	g := startSubs(b, "dbus", p.Path, n, match)
	pub, err := dbuspeer.Dial(p.Path)
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	sig := &dbuspeer.Message{Type: dbuspeer.TypeSignal, Path: benchSignal.Path, Interface: benchSignal.Interface,
		Member: benchSignal.Member, Signature: benchSignal.Signature, Body: benchSignal.Body}
	runPublish(b, g, p.PID, "bus-µs/delivery", func(k int) {
		for range k {
			if _, err := pub.Send(sig); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// seqpacketPair returns a connected blocking SOCK_SEQPACKET pair as files.
func seqpacketPair(b *testing.B) (*os.File, *os.File) {
	b.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	x, y := os.NewFile(uintptr(fds[0]), "seqpacket"), os.NewFile(uintptr(fds[1]), "seqpacket")
	b.Cleanup(func() { x.Close(); y.Close() })
	return x, y
}

func benchRaw(b *testing.B, relay bool) {
	const n = 8
	dbuspeer.Place(b)
	var outs []int // the sockets this process (or the relay) writes
	var outFiles []*os.File
	var procs []dbuspeer.Sub
	for range n {
		w, r := seqpacketPair(b)
		outs, outFiles = append(outs, testutil.FD(b, w)), append(outFiles, w)
		cmd := testutil.Child(b, subsChild, -1, -1, r)
		cmd.Env = append(cmd.Env, envKind+"=raw", envSubs+"=1")
		procs = append(procs, dbuspeer.Sub{Cmd: cmd, Per: 1})
	}
	g, err := dbuspeer.StartGroup(procs)
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		for _, f := range outFiles {
			f.Close()
		}
		if err := g.Close(); err != nil {
			b.Error(err)
		}
	}()
	pid := 0
	if relay {
		w, r := seqpacketPair(b)
		cmd := testutil.Child(b, relayChild, -1, -1, append([]*os.File{r}, outFiles...)...)
		cmd.Env = append(cmd.Env, envSubs+"="+strconv.Itoa(n))
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		r.Close()
		for _, f := range outFiles {
			f.Close() // the relay holds them; its exit ends the subscribers
		}
		defer func() {
			w.Close()
			if err := cmd.Wait(); err != nil {
				b.Errorf("relay: %v", err)
			}
		}()
		outs, pid = []int{testutil.FD(b, w)}, cmd.Process.Pid
	}
	pkt := make([]byte, rawPacket)
	pkts := make([][]byte, publishWindow)
	for i := range pkts {
		pkts[i] = pkt
	}
	runPublish(b, g, pid, "relay-µs/delivery", func(k int) {
		for _, fd := range outs {
			if err := sendAll(fd, pkts[:k]); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// sendAll writes each of pkts as one packet on the blocking socket fd,
// with as few sendmmsg calls as it takes.
func sendAll(fd int, pkts [][]byte) error {
	iov := make([]unix.Iovec, len(pkts))
	hdr := make([]unix.Mmsghdr, len(pkts))
	for i, p := range pkts {
		iov[i] = unix.Iovec{Base: unsafe.SliceData(p)}
		iov[i].SetLen(len(p))
		hdr[i].Hdr.Iov, hdr[i].Hdr.Iovlen = &iov[i], 1
	}
	for len(hdr) > 0 {
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&hdr[0])), uintptr(len(hdr)), 0, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return os.NewSyscallError("sendmmsg", e)
		}
		hdr = hdr[n:]
	}
	return nil
}

// runSubs is a subscriber process: $PORTER_BENCH_SUBS subscribers of kind
// $PORTER_BENCH_KIND, counted in a dbuspeer.Tally served on stdin/stdout.
func runSubs() int {
	n, err := strconv.Atoi(os.Getenv(envSubs))
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench subscribers:", err)
		return 1
	}
	match := -1
	if v, ok := os.LookupEnv(envMatch); ok {
		if match, err = strconv.Atoi(v); err != nil {
			fmt.Fprintln(os.Stderr, "bench subscribers:", err)
			return 1
		}
	}
	t := dbuspeer.NewTally()
	var wg sync.WaitGroup
	var stop func()
	switch kind := os.Getenv(envKind); kind {
	case "porter":
		stop, err = porterSubs(t, &wg, os.Getenv(envPath), n, match)
	case "dbus":
		stop, err = dbusSubs(t, &wg, os.Getenv(envPath), n, match)
	case "raw":
		stop, err = rawSubs(t, &wg, n)
	default:
		err = fmt.Errorf("%s=%q: want porter, dbus or raw", envKind, kind)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench subscribers:", err)
		return 1
	}
	serr := t.Serve(os.Stdin, os.Stdout)
	stop()
	wg.Wait()
	if serr != nil {
		fmt.Fprintln(os.Stderr, "bench subscribers:", serr)
		return 1
	}
	return 0
}

// member is the MEMBER the i-th subscriber of a process asks for.
func member(i, match int) string {
	if i < match {
		return benchSignal.Member
	}
	return otherMember
}

func porterSubs(t *dbuspeer.Tally, wg *sync.WaitGroup, path string, n, match int) (func(), error) {
	ctx := context.Background()
	var eps []*bus.Endpoint
	var ws []*bus.Watcher
	stop := func() {
		for _, e := range eps {
			e.Close()
		}
	}
	for i := range n {
		e, err := bus.DialOptions(ctx, path, bus.Options{Label: "sub" + strconv.Itoa(i), NoFDs: true})
		if err != nil {
			stop()
			return nil, err
		}
		eps = append(eps, e)
		rules := []bus.Rule{{Kind: bus.RuleInterface, Value: benchSignal.Interface}}
		if match >= 0 {
			rules = append(rules, bus.Rule{Kind: bus.RuleMember, Value: member(i, match)})
		}
		w, err := e.Watch(ctx, 0, rules...)
		if err != nil {
			stop()
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range w.C {
				t.Add(1)
			}
		}()
		ws = append(ws, w)
	}
	// What the master could not queue, or a watcher dropped: the parent
	// hears of it instead of waiting.
	t.Check = func() int64 {
		var l uint64
		for i, e := range eps {
			l += e.Lost() + ws[i].Dropped()
		}
		return int64(l)
	}
	return stop, nil
}

func dbusSubs(t *dbuspeer.Tally, wg *sync.WaitGroup, path string, n, match int) (func(), error) {
	var conns []*dbuspeer.Conn
	stop := func() {
		for _, c := range conns {
			c.Shutdown()
		}
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	}
	for i := range n {
		c, err := dbuspeer.Dial(path)
		if err != nil {
			stop()
			return nil, err
		}
		conns = append(conns, c)
		rule := "type='signal',interface='" + benchSignal.Interface + "'"
		if match >= 0 {
			rule += ",member='" + member(i, match) + "'"
		}
		if err := c.AddMatch(rule); err != nil {
			stop()
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				m, err := c.Read()
				if err != nil {
					return
				}
				if m.Type == dbuspeer.TypeSignal && m.Interface == benchSignal.Interface {
					t.Add(1)
				}
				m.Close()
			}
		}()
	}
	return stop, nil
}

// rawSubs reads n sockets, fds 3, 4, …, until they end.
func rawSubs(t *dbuspeer.Tally, wg *sync.WaitGroup, n int) (func(), error) {
	for i := range n {
		fd := 3 + i
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer unix.Close(fd)
			buf := make([]byte, 2*rawPacket)
			for {
				k, err := unix.Read(fd, buf)
				if err == unix.EINTR {
					continue
				}
				if err != nil || k == 0 {
					return
				}
				t.Add(1)
			}
		}()
	}
	// The parent closes its ends (or the relay exits) when it is done.
	return func() {}, nil
}

// runRelay reads packets from fd 3 and writes each to the
// $PORTER_BENCH_SUBS sockets from fd 4 on, until fd 3 ends.
func runRelay() int {
	n, err := strconv.Atoi(os.Getenv(envSubs))
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		return 1
	}
	var outs []int
	for i := range n {
		outs = append(outs, 4+i)
	}
	bufs := make([][]byte, publishWindow)
	for i := range bufs {
		bufs[i] = make([]byte, 2*rawPacket)
	}
	for {
		// Wait for one packet, then take what else has come.
		var pkts [][]byte
		for len(pkts) < len(bufs) {
			flags := 0
			if len(pkts) > 0 {
				flags = unix.MSG_DONTWAIT
			}
			k, _, err := unix.Recvfrom(3, bufs[len(pkts)], flags)
			if err == unix.EINTR {
				continue
			}
			if err == unix.EAGAIN && len(pkts) > 0 {
				break
			}
			if err != nil || k == 0 {
				return 0
			}
			pkts = append(pkts, bufs[len(pkts)][:k])
		}
		for _, fd := range outs {
			if err := sendAll(fd, pkts); err != nil {
				fmt.Fprintln(os.Stderr, "relay:", err)
				return 1
			}
		}
	}
}
