package acceptloop

import (
	"testing"
	"time"
)

// TestLimiter: the first failure of a run is logged, then one per
// interval; a success starts a new run.
func TestLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := limiter{every: time.Second, now: func() time.Time { return now }}
	step := func(d time.Duration, want bool) {
		t.Helper()
		now = now.Add(d)
		if got := l.allow(); got != want {
			t.Fatalf("at +%v: allow %v, want %v", d, got, want)
		}
	}
	step(0, true)
	step(10*time.Millisecond, false)
	step(500*time.Millisecond, false)
	step(490*time.Millisecond, true)
	step(time.Millisecond, false)
	l.reset()
	step(time.Millisecond, true)
}
