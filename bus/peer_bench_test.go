package bus_test

import (
	"os"
	"testing"
	"time"

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
	echo, err := dbuspeer.StartEcho(p.Path, "org.porter.Bench")
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := echo.Close(); err != nil {
			b.Error(err)
		}
	}()
	c, err := dbuspeer.Dial(p.Path)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
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
	for range 100 { // warm the connections and the bus's caches up
		r, err := c.Call(call)
		if err != nil {
			b.Fatal(err)
		}
		r.Close()
	}
	lat := make([]time.Duration, 0, b.N)
	cpu := meterCPU(b, p.PID)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		r, err := c.Call(call)
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
		if withFD && len(r.FDs) != 1 {
			b.Fatalf("return carries %d fds, want 1", len(r.FDs))
		}
		r.Close()
	}
	b.StopTimer()
	cpu.report(b, "bus-µs/call")
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
