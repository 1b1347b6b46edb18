package bus

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/porter-ipc/porter/internal/testutil"
)

// vmRSS is this process's resident set in bytes (/proc/self/status).
func vmRSS(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// A multicast storm toward a subscriber that never reads: the master (in
// this process) stays within its queue bounds, another subscriber keeps
// receiving, and the laggard, once it reads, is told how many it missed:
// what it got plus the Lost total is exactly what was published.
func TestMulticastStorm(t *testing.T) {
	testutil.CheckLeaks(t)
	m := busMaster(t)
	ctx := ctxT(t)
	rules := []Rule{{Kind: RuleInterface, Value: "com.example.Storm"}}
	stuck := join(t, m.Addr(), 0, "stuck")
	stuck.done(TypeAddMatch, AddMatchBody{Cookie: 1, Bloom: MatchBloom(DefaultBloom, rules), Rules: rules}.Encode())
	other := dial(t, m, Options{})
	w, err := other.Watch(ctx, 0, rules...)
	if err != nil {
		t.Fatal(err)
	}
	var got atomic.Uint64
	after := make(chan struct{})
	go func() {
		for x := range w.C {
			if x.Member == "After" {
				close(after)
				return
			}
			got.Add(1)
		}
	}()
	pub := dial(t, m, Options{})
	const (
		count = 4000
		size  = 32 << 10 // 128 MiB in all, 8 × the master's queue_bytes
	)
	body := bytes.Repeat([]byte{'s'}, size)
	before := vmRSS(t)
	peak := before
	for i := 0; i < count; i++ {
		if err := pub.Publish(ctx, &Message{Path: "/storm", Interface: "com.example.Storm", Member: "Storm", Body: body}); err != nil {
			t.Fatal(err)
		}
		if i%256 == 0 {
			peak = max(peak, vmRSS(t))
		}
	}
	// The other subscriber keeps up: what it did not get it was told
	// about (Lost) or its own reader dropped, and it still receives.
	testutil.WaitFor(t, "the other subscriber to account for the storm", func() bool {
		return got.Load()+other.Lost()+w.Dropped() >= count
	})
	peak = max(peak, vmRSS(t))
	if n := got.Load(); n == 0 || n+other.Lost()+w.Dropped() != count {
		t.Errorf("the other subscriber got %d of %d, Lost %d, dropped %d", n, count, other.Lost(), w.Dropped())
	}
	if err := pub.Publish(ctx, &Message{Path: "/storm", Interface: "com.example.Storm", Member: "After"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-after:
	case <-ctx.Done():
		t.Fatal("the other subscriber got nothing after the storm")
	}
	// Bounded: the queues (16 MiB per receiver, 1 MiB per sender share)
	// and the runtime's slack, never the 128 MiB the storm was.
	if grew := peak - before; grew > 64<<20 {
		t.Errorf("RSS grew by %d MiB under a %d MiB storm", grew>>20, count*size>>20)
	}
	t.Logf("RSS %d MiB before, peak %d MiB", before>>20, peak>>20)
	// The laggard reads now: its frames, then Lost with the rest, of the
	// storm and the signal after it.
	var received, lost uint64
	for received+lost < count+1 {
		f, _ := stuck.read()
		if f.Type != TypeSignal {
			continue
		}
		switch {
		case f.Source == pub.Address():
			received++
		case f.Source == AddrBus && f.Text(FieldMember) == MemberLost:
			if len(f.Body) < 16 {
				t.Fatalf("Lost body of %d bytes", len(f.Body))
			}
			lost = le64(f.Body[8:])
		}
	}
	if received+lost != count+1 || lost == 0 {
		t.Errorf("the stuck subscriber got %d and was told it lost %d, of %d", received, lost, count+1)
	}
	t.Logf("stuck subscriber: %d received, %d lost", received, lost)
}
