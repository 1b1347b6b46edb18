package broker

import "time"

// clock is the time the cache runs on: when a deferred token expires and
// when a socket's linger ends. The Server uses the wall clock; its tests
// set their own (Server.clock) so that nothing in them waits for a time to
// pass or hopes that one has not.
type clock interface {
	Now() time.Time
	AfterFunc(d time.Duration, f func()) timer // f runs in its own goroutine, or the clock's
}

// timer is an AfterFunc that has not run yet; Stop cancels it.
type timer interface{ Stop() bool }

// wallClock is the real time.
type wallClock struct{}

func (wallClock) Now() time.Time                            { return time.Now() }
func (wallClock) AfterFunc(d time.Duration, f func()) timer { return time.AfterFunc(d, f) }
