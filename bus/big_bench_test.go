package bus_test

import (
	"context"
	"encoding/binary"
	"os"
	"testing"
	"time"

	"github.com/porter-ipc/porter/bus"
	"github.com/porter-ipc/porter/internal/dbuspeer"
	"github.com/porter-ipc/porter/internal/testutil"
)

// The 16 MiB rows (issue 11): one method call carrying 16 MiB and its
// short reply, on porter's bus and on the peers, under one placement.
//
// The same work on both sides, so that the rows compare the buses:
//
//   - The sender starts from the 16 MiB in a []byte it owns, filled once
//     before the timed loop. On D-Bus the lean client writes the header
//     and that slice to the socket (writev: the kernel copies it in, no
//     copy in user space). On porter the slice is the call's Body, which
//     the endpoint copies once into a pooled memfd (Call16M), or the sender
//     copies it into a Payload it took from NewPayload, through its
//     mapping (Call16MInPlace) or with Payload.Write (Call16MWrite); every
//     copy is timed, as the D-Bus write is.
//   - The receiver reads every byte (dbuspeer.Checksum over the whole
//     body) and answers the checksum, 8 bytes, which the sender checks.
//     On D-Bus the service reads the array from its socket into one
//     buffer it reuses (dbuspeer.Sink); on porter the handler reads the
//     read-only mapping of the sealed memfd.
//   - The receiving service runs in the benchmark's process on both (a
//     goroutine), the bus (porter's master) in its own process.
//
// Metrics: MB/s (of the 16 MiB), p50/p99 per call, the bus process's CPU
// time per call (master-µs/call, bus-µs/call), and cpu-µs/call, the CPU
// time of every process of the call (this one and the bus) per call.

// bigSize is the body of the 16 MiB rows.
const bigSize = 16 << 20

// bigSource is the sender's 16 MiB, and the checksum the receiver must
// answer.
func bigSource() ([]byte, uint64) {
	b := make([]byte, bigSize)
	x := uint64(0x9e3779b97f4a7c15)
	for i := 0; i+8 <= len(b); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(b[i:], x)
	}
	return b, dbuspeer.Checksum(b)
}

// BenchmarkDBusBrokerCall16M: a call whose body is one "ay" of 16 MiB to
// a service on dbus-broker that reads it all and answers its checksum.
func BenchmarkDBusBrokerCall16M(b *testing.B) { benchPeerCall16M(b, dbusBroker) }

// BenchmarkDBusDaemonCall16M is BenchmarkDBusBrokerCall16M on dbus-daemon.
func BenchmarkDBusDaemonCall16M(b *testing.B) { benchPeerCall16M(b, dbusDaemon) }

func benchPeerCall16M(b *testing.B, pr peer) {
	p := startPeer(b, pr)
	sink, err := dbuspeer.StartSink(p.Path, "org.porter.Bench")
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := sink.Close(); err != nil {
			b.Error(err)
		}
	}()
	c, err := dbuspeer.Dial(p.Path)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	src, sum := bigSource()
	call := &dbuspeer.Message{Type: dbuspeer.TypeMethodCall, Destination: "org.porter.Bench",
		Path: "/org/porter/Bench", Interface: "org.porter.Bench", Member: "Sum"}
	one := func() {
		r, err := c.CallBytes(call, src)
		if err != nil {
			b.Fatal(err)
		}
		if got, err := r.BodyUint64(); err != nil || got != sum {
			b.Fatalf("checksum %#x, %v; want %#x", got, err, sum)
		}
		r.Close()
	}
	timeCalls16M(b, p.PID, "bus-µs/call", one)
}

// sumHandler answers a call with the checksum of its body.
func sumHandler(ctx context.Context, c *bus.Call) (*bus.Message, error) {
	return &bus.Message{Signature: "t", Body: dbuspeer.Uint64Body(dbuspeer.Checksum(c.Body))}, nil
}

// BenchmarkBusMasterCall16M: a call with a 16 MiB Body (copied once into
// a sealed memfd from the pool) on the direct channel to an endpoint that
// reads it all and answers its checksum.
func BenchmarkBusMasterCall16M(b *testing.B) { benchBusCall16M(b, "body") }

// BenchmarkBusMasterCall16MInPlace is BenchmarkBusMasterCall16M with the
// body written by the sender into a Payload's mapping (NewPayload, Bytes),
// sent without a copy; the sender's writing is timed.
func BenchmarkBusMasterCall16MInPlace(b *testing.B) { benchBusCall16M(b, "inplace") }

// BenchmarkBusMasterCall16MWrite is BenchmarkBusMasterCall16MInPlace with
// the body written by Payload.Write instead of through the mapping.
func BenchmarkBusMasterCall16MWrite(b *testing.B) { benchBusCall16M(b, "write") }

func benchBusCall16M(b *testing.B, way string) {
	m := startMaster(b)
	ctx := context.Background()
	srv, err := bus.DialOptions(ctx, m.path, bus.Options{Label: "bench-sum", Handler: sumHandler})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	if done, err := srv.RequestName(ctx, "org.porter.Bench", 0); err != nil || done != 1 {
		b.Fatalf("RequestName: %d, %v", done, err)
	}
	c, err := bus.DialOptions(ctx, m.path, bus.Options{Label: "bench-client"})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	src, sum := bigSource()
	one := func() {
		call := &bus.Message{Path: "/org/porter/Bench", Interface: "org.porter.Bench", Member: "Sum", Body: src}
		if way != "body" {
			p, err := bus.NewPayload(bigSize)
			if err != nil {
				b.Fatal(err)
			}
			if way == "write" {
				if _, err := p.Write(src); err != nil {
					b.Fatal(err)
				}
			} else {
				copy(p.Bytes(), src)
			}
			call.Body, call.Payload = nil, p
		}
		r, err := c.Call(ctx, "org.porter.Bench", call)
		if err != nil {
			b.Fatal(err)
		}
		if len(r.Body) != 8 || binary.LittleEndian.Uint64(r.Body) != sum {
			b.Fatalf("reply %x; want the checksum %#x", r.Body, sum)
		}
		r.Close()
	}
	timeCalls16M(b, m.pid, "master-µs/call", one)
}

// timeCalls16M makes 3 calls to warm up (the buses' buffers grow to the
// message; porter's channel is set up and its pool filled), then times
// b.N, and reports the bus process's CPU per call as busUnit, the CPU of
// every process of the call (cpu-µs/call), and p50/p99.
func timeCalls16M(b *testing.B, busPID int, busUnit string, one func()) {
	for range 3 {
		one()
	}
	lat := make([]time.Duration, 0, b.N)
	cpu, all := meterCPU(b, busPID), meterAll(b, busPID)
	b.SetBytes(bigSize)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		one()
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	cpu.report(b, busUnit)
	all.report(b)
	testutil.ReportLatency(b, lat)
}

// allMeter reads the CPU time of this process (the sender and the
// receiving service) and of the bus process together over the timed
// loop: on one CPU shared with other work, the cost of a call that wall
// time (ns/op, p50) shows only with the others' time mixed in.
type allMeter struct{ self, bus *cpuMeter }

func meterAll(b *testing.B, busPID int) allMeter {
	return allMeter{meterCPU(b, os.Getpid()), meterCPU(b, busPID)}
}

// report reports the two processes' CPU time per call as cpu-µs/call.
func (m allMeter) report(b *testing.B) {
	b.Helper()
	var sum time.Duration
	for _, c := range []*cpuMeter{m.self, m.bus} {
		t, err := dbuspeer.CPUTime(c.pid)
		if err != nil {
			b.Fatal(err)
		}
		sum += t - c.start
	}
	b.ReportMetric(float64(sum.Nanoseconds())/1e3/float64(b.N), "cpu-µs/call")
}
