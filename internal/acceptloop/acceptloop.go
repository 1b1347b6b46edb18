// Package acceptloop is the accept loop that porter's servers (broker,
// ipc) share: accept until the listener is closed, ride out a temporary
// shortage of fds or memory with a growing pause, as net/http's Server
// does, and log the shortage without flooding the log.
package acceptloop

import (
	"errors"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The pause after a temporary failure starts at MinBackoff and doubles
// with every failure in a row, up to MaxBackoff. A failure is logged when
// a run of them starts, then at most once per LogEvery.
const (
	MinBackoff = 5 * time.Millisecond
	MaxBackoff = time.Second
	LogEvery   = time.Second
)

// Options are Run's optional parts; the zero value is a plain loop.
type Options struct {
	// Stop, once closed, ends Run with nil before its next Accept or
	// during a pause. It does not interrupt an Accept that is waiting:
	// close the listener for that.
	Stop <-chan struct{}
	// Slots, if not nil, bounds the connections being handled: Run
	// puts a token in it before each Accept (waiting while it is
	// full, so new clients wait in the listen backlog) and takes it
	// back when Accept fails. The handler takes it back (<-Slots)
	// when it is done with the connection.
	Slots chan struct{}
	// Log, if set, is told of temporary failures (rate-limited: see
	// LogEvery). It runs on the loop's goroutine.
	Log func(err error)
}

// Run accepts connections on l and calls handle with each, which takes
// ownership of it; handle must not block for long. Run returns nil when
// l is closed (net.ErrClosed) or opts.Stop is closed, and the error of a
// failed Accept that is not Temporary. It does not close l.
func Run(l net.Listener, handle func(net.Conn), opts Options) error {
	var backoff time.Duration
	lim := limiter{every: LogEvery, now: time.Now}
	for {
		if stopped(opts.Stop) {
			return nil
		}
		if opts.Slots != nil {
			select {
			case opts.Slots <- struct{}{}:
			case <-opts.Stop:
				return nil
			}
		}
		c, err := l.Accept()
		if err == nil {
			backoff = 0
			lim.reset()
			handle(c)
			continue
		}
		if opts.Slots != nil {
			<-opts.Slots
		}
		if errors.Is(err, net.ErrClosed) || stopped(opts.Stop) {
			return nil
		}
		if !Temporary(err) {
			return err
		}
		if opts.Log != nil && lim.allow() {
			opts.Log(err)
		}
		backoff = min(max(2*backoff, MinBackoff), MaxBackoff)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-opts.Stop:
			t.Stop()
			return nil
		}
	}
}

// Temporary reports whether a failed Accept may work when tried again
// later: the process or the system is out of fds (EMFILE, ENFILE) or
// memory (ENOBUFS, ENOMEM), a client gave up before it was accepted
// (ECONNABORTED), a signal came (EINTR), or a deadline passed.
func Temporary(err error) bool {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM, unix.ECONNABORTED, unix.EINTR:
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func stopped(stop <-chan struct{}) bool {
	select {
	case <-stop:
		return true
	default:
		return false
	}
}

// limiter lets the first failure of a run through, then one per every.
type limiter struct {
	every time.Duration
	now   func() time.Time
	last  time.Time // zero: no failure since the last success
}

func (l *limiter) allow() bool {
	now := l.now()
	if !l.last.IsZero() && now.Sub(l.last) < l.every {
		return false
	}
	l.last = now
	return true
}

func (l *limiter) reset() { l.last = time.Time{} }
