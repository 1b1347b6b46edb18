package bus_test

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/porter-ipc/porter/bus"
	"github.com/porter-ipc/porter/internal/dbuspeer"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// The D-Bus rows (issue 13): the same D-Bus clients against porter's
// D-Bus front door (docs/dbus.md), dbus-broker and dbus-daemon, so that a
// row DBusPorterX reads beside DBusBrokerX and DBusDaemonX of the same
// run. Porter's master runs in a child process (this test binary again,
// with Listen, ListenDBus and Serve) started as a dbuspeer.Peer, so every
// peer harness of peer_bench_test.go and multicast_bench_test.go (calls,
// fds, publishing, idle connections, joins) drives it unchanged, and the
// bus's CPU time and memory are read from /proc as the peers' are. All
// under dbuspeer.Place.
//
// PORTER_BENCH_MASTER_PROFILE=FILE writes a CPU profile of the porter
// master child over its whole life to FILE (go tool pprof FILE): where
// the master spends the D-Bus rows' time.

// porterDBus is porter's master as a D-Bus bus.
var porterDBus = peer{"porter", nil, startPorterDBus}

// dbusMasterChild is the name of the child helper that runs a master with
// a D-Bus front door.
const dbusMasterChild = "bus-bench-dbus-master"

// envMasterProfile names the file for the master child's CPU profile.
const envMasterProfile = "PORTER_BENCH_MASTER_PROFILE"

func init() {
	if os.Getenv(testutil.ChildEnv) == dbusMasterChild {
		os.Exit(runDBusMaster())
	}
}

// startPorterDBus starts a master child serving D-Bus on the peer's socket
// and its native socket beside it.
func startPorterDBus() (*dbuspeer.Peer, error) {
	bin, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return dbuspeer.StartProcess("porter", func(path string) *exec.Cmd {
		cmd := testutil.ChildOf(bin, dbusMasterChild, -1, -1)
		cmd.Env = append(cmd.Env, "PORTER_DBUS="+path)
		return cmd
	})
}

// runDBusMaster serves a master on $PORTER_DBUS (D-Bus) and a native
// socket beside it, says "ready" on stdout, and closes the master on
// SIGTERM.
func runDBusMaster() int {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	dpath := os.Getenv("PORTER_DBUS")
	m, err := bus.Listen(filepath.Join(filepath.Dir(dpath), "native"), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench D-Bus master:", err)
		return 1
	}
	if err := m.ListenDBus(dpath); err != nil {
		m.Close()
		fmt.Fprintln(os.Stderr, "bench D-Bus master:", err)
		return 1
	}
	if prof := os.Getenv(envMasterProfile); prof != "" {
		f, err := os.Create(prof)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			m.Close()
			fmt.Fprintln(os.Stderr, "bench D-Bus master: profile:", err)
			return 1
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	served := make(chan error, 1)
	go func() { served <- m.Serve() }()
	fmt.Println("ready")
	<-term
	if err := m.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "bench D-Bus master: close:", err)
		return 1
	}
	if err := <-served; err != nil {
		fmt.Fprintln(os.Stderr, "bench D-Bus master: serve:", err)
		return 1
	}
	return 0
}

// BenchmarkDBusPorterCall is BenchmarkDBusBrokerCall on porter's D-Bus
// front door: the lean client calls the lean echo service, both D-Bus
// connections; bus-µs/call is the master's CPU time per call.
func BenchmarkDBusPorterCall(b *testing.B) { benchPeerCall(b, porterDBus, false) }

// BenchmarkDBusPorterCallFD is BenchmarkDBusBrokerCallFD on porter's
// D-Bus front door.
func BenchmarkDBusPorterCallFD(b *testing.B) { benchPeerCall(b, porterDBus, true) }

// BenchmarkDBusPorterPublish8 is BenchmarkDBusBrokerPublish8 on porter's
// D-Bus front door: lean D-Bus subscribers with AddMatch.
func BenchmarkDBusPorterPublish8(b *testing.B) { benchPeerPublish(b, porterDBus, 8, -1) }

// BenchmarkDBusPorterPublish100 is BenchmarkDBusBrokerPublish100 on
// porter's D-Bus front door.
func BenchmarkDBusPorterPublish100(b *testing.B) { benchPeerPublish(b, porterDBus, 100, -1) }

// BenchmarkDBusPorterIdle is BenchmarkDBusBrokerIdle on porter's D-Bus
// front door: B/conn is the master's growth per idle D-Bus connection.
func BenchmarkDBusPorterIdle(b *testing.B) { benchPeerIdle(b, porterDBus) }

// BenchmarkDBusPorterJoin is BenchmarkDBusBrokerJoin on porter's D-Bus
// front door.
func BenchmarkDBusPorterJoin(b *testing.B) { benchPeerJoin(b, porterDBus) }

// BenchmarkDBusPorterCallGodbus: a method call Echo(s) → s from a godbus
// client to a godbus service (dbuspeer.GodbusEcho) through porter's D-Bus
// front door, by well-known name, with the string of
// BenchmarkDBusPorterCall; p50/p99, the bus's CPU time per call,
// client-µs/call, the CPU time of this process (godbus client and
// service) per call, and cpu-µs/call, the two together.
func BenchmarkDBusPorterCallGodbus(b *testing.B) { benchGodbusCall(b, porterDBus, false) }

// BenchmarkDBusBrokerCallGodbus is BenchmarkDBusPorterCallGodbus on
// dbus-broker.
func BenchmarkDBusBrokerCallGodbus(b *testing.B) { benchGodbusCall(b, dbusBroker, false) }

// BenchmarkDBusDaemonCallGodbus is BenchmarkDBusPorterCallGodbus on
// dbus-daemon.
func BenchmarkDBusDaemonCallGodbus(b *testing.B) { benchGodbusCall(b, dbusDaemon, false) }

// BenchmarkDBusPorterCallGodbusFD is BenchmarkDBusPorterCallGodbus with
// one fd in the call, EchoFD(s, h) → (s, h), and back in the return.
func BenchmarkDBusPorterCallGodbusFD(b *testing.B) { benchGodbusCall(b, porterDBus, true) }

// BenchmarkDBusBrokerCallGodbusFD is BenchmarkDBusPorterCallGodbusFD on
// dbus-broker.
func BenchmarkDBusBrokerCallGodbusFD(b *testing.B) { benchGodbusCall(b, dbusBroker, true) }

// BenchmarkDBusDaemonCallGodbusFD is BenchmarkDBusPorterCallGodbusFD on
// dbus-daemon.
func BenchmarkDBusDaemonCallGodbusFD(b *testing.B) { benchGodbusCall(b, dbusDaemon, true) }

func benchGodbusCall(b *testing.B, pr peer, withFD bool) {
	p := startPeer(b, pr)
	const name = "org.porter.Bench"
	echo, err := dbuspeer.StartGodbusEcho(p.Path, name, "/org/porter/Bench", name)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := echo.Close(); err != nil {
			b.Error(err)
		}
	})
	c, err := dbuspeer.GodbusDial(p.Path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	obj := c.Object(name, "/org/porter/Bench")
	const arg = "0123456789abcdef"
	var fd dbus.UnixFD = -1
	if withFD {
		pr, pw, err := os.Pipe()
		if err != nil {
			b.Fatal(err)
		}
		defer pr.Close()
		defer pw.Close()
		fd = dbus.UnixFD(testutil.FD(b, pw))
	}
	timeCalls(b, p.PID, 100, 0, func() {
		var s string
		if !withFD {
			if err := obj.Call(name+".Echo", 0, arg).Store(&s); err != nil {
				b.Fatal(err)
			}
		} else {
			var back dbus.UnixFD = -1
			if err := obj.Call(name+".EchoFD", 0, arg, fd).Store(&s, &back); err != nil {
				b.Fatal(err)
			}
			if back < 0 {
				b.Fatal("the return carries no fd")
			}
			unix.Close(int(back))
		}
		if s != arg {
			b.Fatalf("echo answered %q, want %q", s, arg)
		}
	})
}

// echo16M is the body of the Echo16M rows: one "ay" of 16 MiB.
var echo16M = func() []byte {
	const n = 16 << 20
	b := binary.LittleEndian.AppendUint32(make([]byte, 0, 4+n), n)
	for i := range n {
		b = append(b, byte(i*7))
	}
	return b
}()

// BenchmarkDBusPorterCall16M is BenchmarkDBusBrokerCall16M on porter's
// D-Bus front door: a call of one 16 MiB "ay" to a service that reads
// it all and answers its checksum.
func BenchmarkDBusPorterCall16M(b *testing.B) { benchPeerCall16M(b, porterDBus) }

// BenchmarkDBusPorterEcho16M: a method call whose body is one "ay" of 16
// MiB from the lean client to the lean echo service, which answers the
// same 16 MiB, through porter's D-Bus front door: 32 MiB through the bus
// per op. MB/s counts the call's 16 MiB; the CPU metrics are
// benchGodbusCall's.
func BenchmarkDBusPorterEcho16M(b *testing.B) { benchEcho16M(b, porterDBus) }

// BenchmarkDBusBrokerEcho16M is BenchmarkDBusPorterEcho16M on dbus-broker.
func BenchmarkDBusBrokerEcho16M(b *testing.B) { benchEcho16M(b, dbusBroker) }

// BenchmarkDBusDaemonEcho16M is BenchmarkDBusPorterEcho16M on dbus-daemon.
func BenchmarkDBusDaemonEcho16M(b *testing.B) { benchEcho16M(b, dbusDaemon) }

func benchEcho16M(b *testing.B, pr peer) {
	p := startPeer(b, pr)
	c := dialEcho(b, p)
	call := &dbuspeer.Message{Type: dbuspeer.TypeMethodCall, Destination: "org.porter.Bench",
		Path: "/org/porter/Bench", Interface: "org.porter.Bench", Member: "Echo",
		Signature: "ay", Body: echo16M}
	// 3 calls to warm up: the buses' buffers grow to the message.
	timeCalls(b, p.PID, 3, len(echo16M), func() {
		r, err := c.Call(call)
		if err != nil {
			b.Fatal(err)
		}
		if len(r.Body) != len(echo16M) {
			b.Fatalf("the return has %d bytes, want %d", len(r.Body), len(echo16M))
		}
	})
}

// dialEcho starts the lean echo service as org.porter.Bench on p's bus
// and connects a lean client, both closed when b ends.
func dialEcho(b *testing.B, p *dbuspeer.Peer) *dbuspeer.Conn {
	b.Helper()
	echo, err := dbuspeer.StartEcho(p.Path, "org.porter.Bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := echo.Close(); err != nil {
			b.Error(err)
		}
	})
	c, err := dbuspeer.Dial(p.Path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// timeCalls makes warm calls of one, then times b.N of them. It reports
// p50/p99 per call, bus-µs/call (the CPU time of process busPID per
// call), client-µs/call (of this process: the clients and services),
// cpu-µs/call (both), and with size > 0, MB/s of size bytes per call.
func timeCalls(b *testing.B, busPID, warm, size int, one func()) {
	b.Helper()
	for range warm {
		one()
	}
	lat := make([]time.Duration, 0, b.N)
	all := meterAll(b, busPID)
	if size > 0 {
		b.SetBytes(int64(size))
	}
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		one()
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	all.bus.report(b, "bus-µs/call")
	all.self.report(b, "client-µs/call")
	all.report(b)
	testutil.ReportLatency(b, lat)
}
