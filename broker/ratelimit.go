package broker

import (
	"log/slog"
	"sync"
	"time"
)

// Repeated warnings of one kind are logged at most warnBurst times in
// each warnEvery; the rest are counted and reported in one summary line.
const (
	warnBurst = 10
	warnEvery = 10 * time.Second
)

// warnLimiter rate-limits repeated log lines, per kind: at most burst
// lines in each window of length every; the others are counted, so that
// one summary line can say how many were left out.
type warnLimiter struct {
	burst int
	every time.Duration
	now   func() time.Time // the clock; tests inject their own

	mu    sync.Mutex
	kinds map[string]*warnCount
}

// warnCount is one kind's state.
type warnCount struct {
	start      time.Time // the current window began then
	logged     int       // lines logged in the current window
	suppressed int       // lines left out and not yet reported
	total      uint64    // every occurrence since the start, logged or not
	armed      bool      // a flush is due at the end of the window
}

func newWarnLimiter(burst int, every time.Duration, now func() time.Time) *warnLimiter {
	return &warnLimiter{burst: burst, every: every, now: now, kinds: map[string]*warnCount{}}
}

// allow counts one occurrence of kind. log says whether to log it.
// reported is the number left out in an earlier window that nobody has
// reported yet: report it first. arm says this is the first one left out
// in the current window: call flush once the window is over (after
// every), so the count is reported even if no other one comes.
func (l *warnLimiter) allow(kind string) (log bool, reported int, total uint64, arm bool) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.kinds[kind]
	if w == nil {
		w = &warnCount{start: now}
		l.kinds[kind] = w
	}
	w.total++
	if !now.Before(w.start.Add(l.every)) {
		reported, w.suppressed = w.suppressed, 0
		w.start, w.logged, w.armed = now, 0, false
	}
	if w.logged < l.burst {
		w.logged++
		return true, reported, w.total, false
	}
	w.suppressed++
	arm = !w.armed
	w.armed = true
	return false, reported, w.total, arm
}

// flush returns, for each kind whose window is over (every kind when all
// is set), how many were left out and not yet reported, and forgets them.
func (l *warnLimiter) flush(all bool) map[string]warnSummary {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out map[string]warnSummary
	for kind, w := range l.kinds {
		if w.suppressed == 0 || (!all && now.Before(w.start.Add(l.every))) {
			continue
		}
		if out == nil {
			out = map[string]warnSummary{}
		}
		out[kind] = warnSummary{Suppressed: w.suppressed, Total: w.total}
		w.suppressed, w.armed = 0, false
	}
	return out
}

// warnSummary is what flush reports of one kind.
type warnSummary struct {
	Suppressed int    // left out since the last report
	Total      uint64 // every occurrence since the start
}

// warn logs a warning of kind, rate-limited per kind (warnLimiter).
func (s *Server) warn(log *slog.Logger, kind, msg string, args ...any) {
	ok, reported, total, arm := s.warns.allow(kind)
	if reported > 0 {
		s.log.Warn("repeated warnings were left out", "kind", kind, "left_out", reported, "total", total)
	}
	if ok {
		log.Warn(msg, args...)
		return
	}
	if arm {
		time.AfterFunc(s.warns.every, func() { s.reportWarnings(false) })
	}
}

// reportWarnings logs how many warnings of each kind were left out.
func (s *Server) reportWarnings(all bool) {
	for kind, w := range s.warns.flush(all) {
		s.log.Warn("repeated warnings were left out", "kind", kind, "left_out", w.Suppressed, "total", w.Total)
	}
}
