package bus_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/porter-ipc/porter/bus"
	"github.com/porter-ipc/porter/internal/dbuspeer"
)

// The multicast rows (issue 11): one publisher, N subscribers whose match
// selects every signal, the bus in a child process, everything under
// dbuspeer.Place. The publisher sends in windows of publishWindow signals
// and waits for every subscriber to have each before the next window,
// so no bus drops (porter's per-sender share is 256 frames, dbus-broker's
// quotas are bytes) and the figure is sustained delivery, not queueing.
// deliveries/s counts signals received, summed over the subscribers;
// master-µs/delivery (bus-µs/delivery for the peers) is the bus
// process's CPU time over the timed loop per delivery. The subscribers
// are connections in this process, each with its own reader goroutine.

const publishWindow = 64

// fanout counts deliveries and wakes the publisher when a window is in.
type fanout struct {
	got    atomic.Int64
	target atomic.Int64
	done   chan struct{}
}

func newFanout() *fanout { return &fanout{done: make(chan struct{}, 1)} }

func (f *fanout) delivered() {
	if f.got.Add(1) == f.target.Load() {
		f.done <- struct{}{}
	}
}

// window sets the count to wait for, runs send, and waits for it.
func (f *fanout) window(b *testing.B, want int64, send func(), lost func() string) {
	f.target.Store(want)
	send()
	if f.got.Load() >= want {
		select { // the reader that reached it signalled (or will)
		case <-f.done:
		case <-time.After(30 * time.Second):
		}
		return
	}
	select {
	case <-f.done:
	case <-time.After(30 * time.Second):
		b.Fatalf("%d of %d deliveries after 30 s (%s)", f.got.Load(), want, lost())
	}
}

func BenchmarkBusPublish8(b *testing.B)    { benchBusPublish(b, 8) }
func BenchmarkBusPublish100(b *testing.B)  { benchBusPublish(b, 100) }
func BenchmarkBusPublish1000(b *testing.B) { benchBusPublish(b, 1000) }

func BenchmarkDBusBrokerPublish8(b *testing.B)    { benchPeerPublish(b, dbusBroker, 8) }
func BenchmarkDBusBrokerPublish100(b *testing.B)  { benchPeerPublish(b, dbusBroker, 100) }
func BenchmarkDBusBrokerPublish1000(b *testing.B) { benchPeerPublish(b, dbusBroker, 1000) }

var benchSignal = bus.Message{Path: "/org/porter/Bench", Interface: "org.porter.Bench", Member: "Tick",
	Signature: "s", Body: dbuspeer.StringBody("0123456789abcdef")}

func benchBusPublish(b *testing.B, n int) {
	m := startMaster(b)
	ctx := context.Background()
	f := newFanout()
	subs := make([]*bus.Endpoint, 0, n)
	var wg sync.WaitGroup
	defer func() {
		for _, e := range subs {
			e.Close()
		}
		wg.Wait()
	}()
	var dropped atomic.Uint64
	for i := range n {
		e, err := bus.DialOptions(ctx, m.path, bus.Options{Label: fmt.Sprintf("sub%d", i), NoFDs: true})
		if err != nil {
			b.Fatal(err)
		}
		subs = append(subs, e)
		w, err := e.Watch(ctx, 0, bus.Rule{Kind: bus.RuleInterface, Value: benchSignal.Interface})
		if err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range w.C {
				f.delivered()
			}
			dropped.Add(w.Dropped())
		}()
	}
	pub, err := bus.DialOptions(ctx, m.path, bus.Options{Label: "publisher", NoFDs: true})
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	lost := func() string {
		var l uint64
		for _, e := range subs {
			l += e.Lost()
		}
		return fmt.Sprintf("lost at the master %d, dropped %d", l, dropped.Load())
	}
	sent := 0
	publish := func(k int) {
		f.window(b, int64(sent+k)*int64(n), func() {
			for range k {
				msg := benchSignal
				if err := pub.Publish(ctx, &msg); err != nil {
					b.Fatal(err)
				}
			}
		}, lost)
		sent += k
	}
	publish(publishWindow) // warm up
	cpu := meterCPU(b, m.pid)
	start := f.got.Load()
	t0 := time.Now()
	b.ResetTimer()
	for left := b.N; left > 0; left -= publishWindow {
		publish(min(left, publishWindow))
	}
	b.StopTimer()
	el := time.Since(t0)
	d := f.got.Load() - start
	b.ReportMetric(float64(d)/el.Seconds(), "deliveries/s")
	t, err := dbuspeer.CPUTime(cpu.pid)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64((t-cpu.start).Nanoseconds())/1e3/float64(d), "master-µs/delivery")
}

func benchPeerPublish(b *testing.B, pr peer, n int) {
	if err := dbuspeer.RaiseNoFile(); err != nil {
		b.Fatal(err)
	}
	p := startPeer(b, pr)
	f := newFanout()
	subs := make([]*dbuspeer.Conn, 0, n)
	var wg sync.WaitGroup
	defer func() {
		for _, c := range subs {
			c.Shutdown()
		}
		wg.Wait()
		for _, c := range subs {
			c.Close()
		}
	}()
	for range n {
		c, err := dbuspeer.Dial(p.Path)
		if err != nil {
			b.Fatal(err)
		}
		subs = append(subs, c)
		if err := c.AddMatch("type='signal',interface='" + benchSignal.Interface + "'"); err != nil {
			b.Fatal(err)
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
					f.delivered()
				}
				m.Close()
			}
		}()
	}
	pub, err := dbuspeer.Dial(p.Path)
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	sig := &dbuspeer.Message{Type: dbuspeer.TypeSignal, Path: benchSignal.Path, Interface: benchSignal.Interface,
		Member: benchSignal.Member, Signature: benchSignal.Signature, Body: benchSignal.Body}
	sent := 0
	publish := func(k int) {
		f.window(b, int64(sent+k)*int64(n), func() {
			for range k {
				if _, err := pub.Send(sig); err != nil {
					b.Fatal(err)
				}
			}
		}, func() string { return "the bus may have dropped a subscriber" })
		sent += k
	}
	publish(publishWindow)
	cpu := meterCPU(b, p.PID)
	start := f.got.Load()
	t0 := time.Now()
	b.ResetTimer()
	for left := b.N; left > 0; left -= publishWindow {
		publish(min(left, publishWindow))
	}
	b.StopTimer()
	el := time.Since(t0)
	d := f.got.Load() - start
	b.ReportMetric(float64(d)/el.Seconds(), "deliveries/s")
	t, err := dbuspeer.CPUTime(cpu.pid)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64((t-cpu.start).Nanoseconds())/1e3/float64(d), "bus-µs/delivery")
}
