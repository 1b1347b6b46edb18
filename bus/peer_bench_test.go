package bus_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/porter-ipc/porter/bus"
	"github.com/porter-ipc/porter/internal/dbuspeer"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// The peer rows of the bus benchmarks (issue 10): dbus-broker and
// dbus-daemon, each a private bus on a socket in a temporary directory
// (internal/dbuspeer), driven by a lean hand-written D-Bus client, next to
// the raw Go round trip that porter's targets are ratios of.
//
// Placement: every process of every bus benchmark (this test process,
// the buses, porter's master) runs on CPU 0, PORTER_BENCH_CPU to change;
// dbuspeer.Place says why.

// peer is one of the buses porter is measured against.
type peer struct {
	name  string
	progs []string
	start func() (*dbuspeer.Peer, error)
}

var (
	dbusBroker = peer{"dbus-broker", []string{"systemd-socket-activate", "dbus-broker-launch", "dbus-broker"}, dbuspeer.StartBroker}
	dbusDaemon = peer{"dbus-daemon", []string{"dbus-daemon"}, dbuspeer.StartDaemon}
)

// startPeer places the benchmark, then starts the bus, stopped when b ends.
func startPeer(b *testing.B, pr peer) *dbuspeer.Peer {
	b.Helper()
	for _, prog := range pr.progs {
		testutil.RequireProgram(b, prog)
	}
	dbuspeer.Place(b)
	p, err := pr.start()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := p.Stop(); err != nil {
			b.Error(err)
		}
	})
	return p
}

// cpuMeter reads the CPU time of a process over a benchmark's timed loop.
type cpuMeter struct {
	pid   int
	start time.Duration
}

func meterCPU(b *testing.B, pid int) *cpuMeter {
	b.Helper()
	t, err := dbuspeer.CPUTime(pid)
	if err != nil {
		b.Fatal(err)
	}
	return &cpuMeter{pid, t}
}

// report reports the process's CPU time per operation as unit.
func (m *cpuMeter) report(b *testing.B, unit string) {
	b.Helper()
	t, err := dbuspeer.CPUTime(m.pid)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64((t-m.start).Nanoseconds())/1e3/float64(b.N), unit)
}

// BenchmarkDBusBrokerCall: one method call with a string body to an echo
// service on dbus-broker, by well-known name, and its return; p50/p99 and
// the broker's CPU time per call.
func BenchmarkDBusBrokerCall(b *testing.B) { benchPeerCall(b, dbusBroker, false) }

// BenchmarkDBusDaemonCall is BenchmarkDBusBrokerCall on dbus-daemon.
func BenchmarkDBusDaemonCall(b *testing.B) { benchPeerCall(b, dbusDaemon, false) }

// BenchmarkDBusBrokerCallFD: the call carries one fd (signature "sh") and
// the echo's return carries it back, as in the raw one-fd round trip.
func BenchmarkDBusBrokerCallFD(b *testing.B) { benchPeerCall(b, dbusBroker, true) }

// BenchmarkDBusDaemonCallFD is BenchmarkDBusBrokerCallFD on dbus-daemon.
func BenchmarkDBusDaemonCallFD(b *testing.B) { benchPeerCall(b, dbusDaemon, true) }

func benchPeerCall(b *testing.B, pr peer, withFD bool) {
	p := startPeer(b, pr)
	c := dialEcho(b, p)
	call := &dbuspeer.Message{Type: dbuspeer.TypeMethodCall, Destination: "org.porter.Bench",
		Path: "/org/porter/Bench", Interface: "org.porter.Bench", Member: "Echo",
		Signature: "s", Body: dbuspeer.StringBody("0123456789abcdef")}
	if withFD {
		pr, pw, err := os.Pipe()
		if err != nil {
			b.Fatal(err)
		}
		defer pr.Close()
		defer pw.Close()
		// "0123456789abcdef" is 4+16+1 bytes; the fd index aligns to 24.
		call.Signature = "sh"
		call.Body = append(call.Body, 0, 0, 0, 0, 0, 0, 0)
		call.FDs = []int{testutil.FD(b, pw)}
	}
	timeEachCall(b, p.PID, "bus-µs/call", func(timed bool) {
		r, err := c.Call(call)
		if err != nil {
			b.Fatal(err)
		}
		if timed && withFD && len(r.FDs) != 1 {
			b.Fatalf("return carries %d fds, want 1", len(r.FDs))
		}
		r.Close()
	})
}

// timeEachCall makes 100 calls to warm the connections and the bus's
// caches up (timed false), then b.N timed ones, and reports their p50 and
// p99 and the bus process's CPU per call in unit.
func timeEachCall(b *testing.B, busPID int, unit string, call func(timed bool)) {
	for range 100 {
		call(false)
	}
	lat := make([]time.Duration, 0, b.N)
	cpu := meterCPU(b, busPID)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		call(true)
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	cpu.report(b, unit)
	testutil.ReportLatency(b, lat)
}

// idleConns is how many idle connections the memory benchmarks hold.
const idleConns = 10000

// BenchmarkDBusBrokerIdle: one op connects idleConns clients to
// dbus-broker (each authenticated and past Hello) and leaves them idle;
// B/conn is the growth of the broker's resident memory (VmRSS) divided by
// idleConns. Its time per op is reported per connection (ns/op is
// overridden), so the row reads as joins into a bus growing to idleConns.
func BenchmarkDBusBrokerIdle(b *testing.B) { benchPeerIdle(b, dbusBroker) }

// BenchmarkDBusDaemonIdle is BenchmarkDBusBrokerIdle on dbus-daemon.
func BenchmarkDBusDaemonIdle(b *testing.B) { benchPeerIdle(b, dbusDaemon) }

func benchPeerIdle(b *testing.B, pr peer) {
	for _, prog := range pr.progs {
		testutil.RequireProgram(b, prog)
	}
	dbuspeer.Place(b)
	var perConn float64
	var joining time.Duration
	conns := make([]*dbuspeer.Conn, 0, idleConns)
	b.ResetTimer()
	for range b.N {
		// A fresh bus each time: one that served connections before
		// keeps the memory they freed, and would show no growth.
		b.StopTimer()
		p, err := pr.start()
		if err != nil {
			b.Fatal(err)
		}
		before, err := dbuspeer.RSS(p.PID)
		if err != nil {
			p.Stop()
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		for range idleConns {
			c, err := dbuspeer.Dial(p.Path)
			if err != nil {
				p.Stop()
				b.Fatalf("after %d connections: %v", len(conns), err)
			}
			conns = append(conns, c)
		}
		joining += time.Since(t0)
		b.StopTimer()
		after, err := dbuspeer.RSS(p.PID)
		for _, c := range conns {
			c.Close()
		}
		conns = conns[:0]
		if serr := p.Stop(); serr != nil {
			b.Fatal(serr)
		}
		if err != nil {
			b.Fatal(err)
		}
		perConn = float64(after-before) / idleConns
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(perConn, "B/conn")
	b.ReportMetric(float64(joining.Nanoseconds())/float64(b.N*idleConns), "ns/op")
}

// BenchmarkDBusBrokerJoin: one op is one client joining dbus-broker
// (connect, AUTH EXTERNAL, NEGOTIATE_UNIX_FD, BEGIN, Hello and its reply)
// and leaving (close).
func BenchmarkDBusBrokerJoin(b *testing.B) { benchPeerJoin(b, dbusBroker) }

// BenchmarkDBusDaemonJoin is BenchmarkDBusBrokerJoin on dbus-daemon.
func BenchmarkDBusDaemonJoin(b *testing.B) { benchPeerJoin(b, dbusDaemon) }

func benchPeerJoin(b *testing.B, pr peer) {
	p := startPeer(b, pr)
	cpu := meterCPU(b, p.PID)
	b.ResetTimer()
	for range b.N {
		c, err := dbuspeer.Dial(p.Path)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	b.StopTimer()
	cpu.report(b, "bus-µs/join")
}

// BenchmarkRawSeqpacketRoundTrip is the floor the bus targets are ratios
// of: 16 bytes sent over a SOCK_SEQPACKET socketpair with raw blocking
// sendmsg/recvmsg to an echo goroutine and back, under the same placement
// as the bus benchmarks. One op is one round trip.
func BenchmarkRawSeqpacketRoundTrip(b *testing.B) {
	dbuspeer.Place(b)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fds[0])
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer unix.Close(fds[1])
		buf := make([]byte, 16)
		for {
			n, _, _, _, err := unix.Recvmsg(fds[1], buf, nil, 0)
			if err != nil || n == 0 {
				return
			}
			if err := unix.Sendmsg(fds[1], buf[:n], nil, nil, 0); err != nil {
				return
			}
		}
	}()
	msg, buf := make([]byte, 16), make([]byte, 16)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		if err := unix.Sendmsg(fds[0], msg, nil, nil, 0); err != nil {
			b.Fatal(err)
		}
		if n, _, _, _, err := unix.Recvmsg(fds[0], buf, nil, 0); err != nil || n != 16 {
			b.Fatalf("recvmsg: %d bytes, %v", n, err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	testutil.ReportLatency(b, lat)
	unix.Shutdown(fds[0], unix.SHUT_RDWR)
	<-done
}

// The porter rows: the same harness against porter's bus, its master a
// child process (this test binary again, running bus.Listen and Serve) so
// that its CPU time and memory can be read apart from the clients', all
// under the peers' placement. The call rows are named BusMasterCall… to
// stand apart from the endpoint's BenchmarkBusCall…, whose master runs in
// the benchmark's own process.

// masterChild is the name of the child helper that runs a master.
const masterChild = "bus-bench-master"

// The master's child runs from init, before the tests' flags are parsed,
// so that the package's TestMain (if any) need not know about it.
func init() {
	if os.Getenv(testutil.ChildEnv) == masterChild {
		os.Exit(runMaster())
	}
}

// runMaster serves a master on $PORTER_BUS, says "ready" on stdout and
// closes the master when stdin closes.
func runMaster() int {
	m, err := bus.Listen(os.Getenv("PORTER_BUS"), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench master:", err)
		return 1
	}
	served := make(chan error, 1)
	go func() { served <- m.Serve() }()
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	if err := m.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "bench master: close:", err)
		return 1
	}
	if err := <-served; err != nil {
		fmt.Fprintln(os.Stderr, "bench master: serve:", err)
		return 1
	}
	return 0
}

// master is a porter bus master in a child process.
type master struct {
	path string
	pid  int
}

// startMaster places the benchmark, then starts a master on a socket in a
// fresh directory, stopped when b ends.
func startMaster(b *testing.B) *master {
	b.Helper()
	dbuspeer.Place(b)
	m, stop := launchMaster(b)
	b.Cleanup(stop)
	return m
}

// launchMaster starts a master child and returns it with its stop, which
// closes its stdin and waits for it to close the master and exit.
func launchMaster(b *testing.B) (*master, func()) {
	b.Helper()
	if err := dbuspeer.RaiseNoFile(); err != nil { // the child inherits the limit
		b.Fatal(err)
	}
	path := filepath.Join(b.TempDir(), "bus")
	cmd := testutil.Child(b, masterChild, -1, -1)
	cmd.Env = append(cmd.Env, "PORTER_BUS="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	stop := func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			b.Errorf("bench master: %v", err)
		}
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		stop()
		b.Fatalf("bench master said %q, %v; want ready", line, err)
	}
	return &master{path: path, pid: cmd.Process.Pid}, stop
}

// echoHandler answers every call with the call's own signature, body and
// fds, as the peers' echo service does.
func echoHandler(ctx context.Context, c *bus.Call) (*bus.Message, error) {
	return &bus.Message{Signature: c.Signature, Body: c.Body, Files: c.Files}, nil
}

// BenchmarkBusMasterCallDirect: one call with a string body to an echo endpoint
// by well-known name, and its reply, on the direct channel the first call
// set up; master-µs/call is the master's CPU time per call (near zero:
// the master is out of the path).
func BenchmarkBusMasterCallDirect(b *testing.B) { benchBusCall(b, false, false) }

// BenchmarkBusMasterCallRouted is BenchmarkBusMasterCallDirect with every call routed
// through the master (Options.Routed).
func BenchmarkBusMasterCallRouted(b *testing.B) { benchBusCall(b, true, false) }

// BenchmarkBusMasterCallFD is BenchmarkBusMasterCallDirect with one fd in the call
// and back in the reply, as in BenchmarkDBusBrokerCallFD.
func BenchmarkBusMasterCallFD(b *testing.B) { benchBusCall(b, false, true) }

// BenchmarkBusMasterCallRoutedFD is BenchmarkBusMasterCallFD routed through the master.
func BenchmarkBusMasterCallRoutedFD(b *testing.B) { benchBusCall(b, true, true) }

func benchBusCall(b *testing.B, routed, withFD bool) {
	m := startMaster(b)
	ctx := context.Background()
	srv, err := bus.DialOptions(ctx, m.path, bus.Options{Label: "bench-echo", Handler: echoHandler})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	if done, err := srv.RequestName(ctx, "org.porter.Bench", 0); err != nil || done != 1 {
		b.Fatalf("RequestName: %d, %v", done, err)
	}
	c, err := bus.DialOptions(ctx, m.path, bus.Options{Label: "bench-client", Routed: routed})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	call := &bus.Message{Path: "/org/porter/Bench", Interface: "org.porter.Bench", Member: "Echo",
		Signature: "s", Body: dbuspeer.StringBody("0123456789abcdef")}
	if withFD {
		pr, pw, err := os.Pipe()
		if err != nil {
			b.Fatal(err)
		}
		defer pr.Close()
		defer pw.Close()
		call.Signature = "sh"
		call.Body = append(call.Body, 0, 0, 0, 0, 0, 0, 0)
		call.Files = []*os.File{pw}
	}
	// The warm-up also sets the channel up (unless routed).
	timeEachCall(b, m.pid, "master-µs/call", func(timed bool) {
		r, err := c.Call(ctx, "org.porter.Bench", call)
		if err != nil {
			b.Fatal(err)
		}
		if timed && withFD && len(r.Files) != 1 {
			b.Fatalf("reply carries %d fds, want 1", len(r.Files))
		}
		r.Close()
	})
}

// BenchmarkBusMasterIdle: one op joins idleConns endpoints to a fresh
// master and leaves them idle; B/endpoint is the growth of the master's
// resident memory divided by idleConns. Its time per op is reported per
// endpoint (ns/op is overridden), as in BenchmarkDBusBrokerIdle.
func BenchmarkBusMasterIdle(b *testing.B) {
	dbuspeer.Place(b)
	ctx := context.Background()
	var perEndpoint float64
	var joining time.Duration
	eps := make([]*bus.Endpoint, 0, idleConns)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		m, stop := launchMaster(b)
		before, err := dbuspeer.RSS(m.pid)
		if err != nil {
			stop()
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		for range idleConns {
			e, err := bus.DialOptions(ctx, m.path, bus.Options{Label: "idle"})
			if err != nil {
				b.Fatalf("after %d endpoints: %v", len(eps), err)
			}
			eps = append(eps, e)
		}
		joining += time.Since(t0)
		b.StopTimer()
		after, err := dbuspeer.RSS(m.pid)
		for _, e := range eps {
			e.Close()
		}
		eps = eps[:0]
		stop()
		if err != nil {
			b.Fatal(err)
		}
		perEndpoint = float64(after-before) / idleConns
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(perEndpoint, "B/endpoint")
	b.ReportMetric(float64(joining.Nanoseconds())/float64(b.N*idleConns), "ns/op")
}

// BenchmarkBusJoin: one op is one endpoint joining porter's bus (connect,
// HELLO, WELCOME) and leaving (BYE, close); master-µs/join is the master's
// CPU time per op.
func BenchmarkBusJoin(b *testing.B) {
	m := startMaster(b)
	ctx := context.Background()
	cpu := meterCPU(b, m.pid)
	b.ResetTimer()
	for range b.N {
		e, err := bus.DialOptions(ctx, m.path, bus.Options{Label: "join"})
		if err != nil {
			b.Fatal(err)
		}
		e.Close()
	}
	b.StopTimer()
	cpu.report(b, "master-µs/join")
}
