package cap_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/porter-ipc/porter/cap"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// BenchmarkRawSeqpacketRoundTrip is the floor for a call: a 32-byte
// packet sent over a SOCK_SEQPACKET socketpair with blocking syscalls,
// echoed by a goroutine, and received back. One op is one round trip.
func BenchmarkRawSeqpacketRoundTrip(b *testing.B) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fds[0])
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer unix.Close(fds[1])
		buf := make([]byte, 64)
		for {
			n, err := unix.Read(fds[1], buf)
			if err != nil || n == 0 {
				return
			}
			if _, err := unix.Write(fds[1], buf[:n]); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 64)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := unix.Write(fds[0], buf[:32]); err != nil {
			b.Fatal(err)
		}
		if _, err := unix.Read(fds[0], buf); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	testutil.ReportLatency(b, lat)
	unix.Shutdown(fds[0], unix.SHUT_RDWR)
	<-done
}

// Null is the object of the call benchmarks.
type Null struct{}

// Nop does nothing.
func (Null) Nop(ctx context.Context, _ struct{}) (struct{}, error) { return struct{}{}, nil }

// Take closes the Ref it is given.
func (Null) Take(ctx context.Context, r *cap.Ref) (struct{}, error) { return struct{}{}, r.Close() }

func benchCall(b *testing.B, method string, args any) {
	srv := cap.NewServer()
	defer srv.Close()
	r, err := srv.Export(Null{})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	ctx := context.Background()
	if err := r.Call(ctx, method, args, nil); err != nil { // opens the session
		b.Fatal(err)
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if err := r.Call(ctx, method, args, nil); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	testutil.ReportLatency(b, lat)
}

// BenchmarkCapNullCall is one call without arguments or result, client
// and server in one process over a real session: compare with
// BenchmarkRawSeqpacketRoundTrip.
func BenchmarkCapNullCall(b *testing.B) { benchCall(b, "Nop", struct{}{}) }

// BenchmarkCapCallWithRef is a call carrying one Ref (an fd, and the
// receiver's dedup lookup): compare with BenchmarkCapNullCall.
func BenchmarkCapCallWithRef(b *testing.B) {
	srv := cap.NewServer()
	defer srv.Close()
	// The Ref passed is another server's object: the receiver installs
	// and deduplicates it at each call.
	other := cap.NewServer()
	defer other.Close()
	x, err := other.Export(Null{})
	if err != nil {
		b.Fatal(err)
	}
	defer x.Close()
	benchCallOn(b, srv, "Take", x)
}

func benchCallOn(b *testing.B, srv *cap.Server, method string, args any) {
	r, err := srv.Export(Null{})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	ctx := context.Background()
	if err := r.Call(ctx, method, args, nil); err != nil {
		b.Fatal(err)
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if err := r.Call(ctx, method, args, nil); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	testutil.ReportLatency(b, lat)
}

// BenchmarkCapDelegateChain: delegations per second through three
// processes (this one, a relay, a sink), 32 callers at once; one op is
// one delegation (two calls, each carrying the Ref).
func BenchmarkCapDelegateChain(b *testing.B) {
	srv, board, br := serveBoard(b)
	x := export(b, srv, &Counter{})
	caps := map[string]*cap.Ref{"BOARD": br}
	sink := startChild(b, "cap-sink", -1, -1, nil, caps)
	relay := startChild(b, "cap-relay", -1, -1, nil, caps)
	sink.expect("ready")
	relay.expect("ready")
	rl := board.get(b, "relay")
	ctx := context.Background()
	if err := rl.Call(ctx, "Pass", x, nil); err != nil {
		b.Fatal(err)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	t0 := time.Now()
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := rl.Call(ctx, "Pass", x, nil); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(t0).Seconds(), "delegations/s")
}
