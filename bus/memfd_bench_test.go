package bus

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/porter-ipc/porter/internal/dbuspeer"
	"github.com/porter-ipc/porter/internal/testutil"
)

// benchTouch answers a call after reading one byte of every page of its
// body: what any receiver pays to get at the bytes (the page faults of a
// memfd mapping, nothing more for an inline body already copied).
func benchTouch(ctx context.Context, c *Call) (*Message, error) {
	var s byte
	for i := 0; i < len(c.Body); i += 4096 {
		s += c.Body[i]
	}
	return &Message{Body: []byte{s}}, nil
}

// payloadSizes are BenchmarkBusPayload's body sizes; the ones up to 60 KiB
// also go inline.
var payloadSizes = []int{4 << 10, 16 << 10, 32 << 10, 60 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20}

// BenchmarkBusPayload sends bodies of 4 KiB to 64 MiB in a call on a
// direct channel, each way a body can travel: inline (up to the inline
// maximum), a fresh memfd per message, a pooled pre-faulted memfd the body
// is copied into, and NewPayload (pooled, built in place: the time to
// write the bytes is not counted, as with a Body built beforehand). It
// reports p50 and, for the pooled ways, pool misses per call (sends that
// found no memfd ready and made one). BUS_PAYLOAD_POOL sets the pool size.
func BenchmarkBusPayload(b *testing.B) {
	for _, size := range payloadSizes {
		for _, way := range []string{"inline", "fresh", "pooled", "inplace"} {
			if way == "inline" && size > 60<<10 {
				continue
			}
			b.Run(fmt.Sprintf("%s/%s", sizeName(size), way), func(b *testing.B) { benchPayload(b, size, way) })
		}
	}
}

// sizeName is 16KiB, 1MiB …
func sizeName(n int) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dKiB", n>>10)
}

func benchPayload(b *testing.B, size int, way string) {
	dbuspeer.Place(b)
	pool := MemfdPoolSize
	if v, err := strconv.Atoi(os.Getenv("BUS_PAYLOAD_POOL")); err == nil && v >= 0 {
		pool = v
	}
	payloadPool.drain()
	if way == "fresh" || way == "inline" {
		payloadPool.size = 0
	} else {
		payloadPool.size = pool
	}
	b.Cleanup(func() {
		payloadPool.drain()
		payloadPool.size = MemfdPoolSize
	})
	m := busMaster(b)
	srv := dial(b, m, Options{Handler: benchTouch})
	cli := dial(b, m, Options{})
	if way == "inline" {
		cli.welcome.MemfdThreshold = 1 << 31
	} else {
		cli.welcome.MemfdThreshold = 0
	}
	dest := FormatAddress(srv.Address())
	body := make([]byte, size)
	fill(body)
	ctx := context.Background()
	if r, err := cli.Call(ctx, dest, &Message{Member: "Touch", Body: body[:1]}); err != nil { // connects
		b.Fatal(err)
	} else {
		r.Close()
	}
	// Let the pool fill as it would between bursts.
	if p, err := NewPayload(size); err == nil {
		p.Close()
	}
	payloadPool.fillers.Wait()
	misses0 := payloadPool.misses.Load()
	lat := make([]time.Duration, 0, b.N)
	b.SetBytes(int64(size))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		msg := &Message{Member: "Touch", Body: body}
		t0 := time.Now()
		var build time.Duration
		if way == "inplace" {
			p, err := NewPayload(size)
			if err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			copy(p.Bytes(), body) // the sender writing its bytes, not counted
			build = time.Since(t1)
			msg = &Message{Member: "Touch", Payload: p}
		}
		r, err := cli.Call(ctx, dest, msg)
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0)-build)
		r.Close()
	}
	b.StopTimer()
	if way == "pooled" || way == "inplace" {
		b.ReportMetric(float64(payloadPool.misses.Load()-misses0)/float64(b.N), "misses/op")
	}
	testutil.ReportLatency(b, lat)
}
