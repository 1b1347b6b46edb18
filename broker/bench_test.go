package broker

import (
	"testing"
	"time"

	"github.com/porter-ipc/porter/internal/testutil"
)

// BenchmarkHandoff is the broker's main path: a request for a socket that
// is already cached (another client holds it, share mode any), answered
// with a token and the fd, from request sent to fd in hand. Compare with
// fdpass's BenchmarkRawFDRoundTrip, the machine's one-fd round trip.
func BenchmarkHandoff(b *testing.B) {
	h := startServer(b, Config{MaxSocketsPerUID: -1})
	holder := h.dial()
	addr := loop(freePort(b))
	g, err := holder.Request(Request{Proto: UDP, Addr: addr, Share: ShareAny, App: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	g.File.Close()
	c, err := Dial(h.path)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close() // releases every reference the loop took
	lat := make([]time.Duration, 0, b.N)
	r := Request{Proto: UDP, Addr: addr, Share: ShareAny, App: "bench"}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		g, err := c.Request(r)
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
		g.File.Close()
	}
	b.StopTimer()
	testutil.ReportLatency(b, lat)
}
