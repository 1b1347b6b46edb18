package broker

import (
	"errors"
	"net/netip"
	"os"

	"github.com/porter-ipc/porter/creator"
)

// Proto is a transport protocol: TCP or UDP. It is the creator's type
// (creator.Proto), so a broker request and a creator request name a
// protocol with the same byte, on both wires.
type Proto = creator.Proto

// Protocols: the creator's, under the broker's names.
const (
	TCP = creator.TCP
	UDP = creator.UDP
)

// Creator makes bound sockets on the broker's behalf. The file it returns
// belongs to the broker. An error that wraps ErrCreatorGone tells the
// broker that the creator has exited and no new socket can be made.
type Creator interface {
	Create(p Proto, addr netip.AddrPort) (*os.File, error)
}

// CreatorFunc adapts a function to Creator.
type CreatorFunc func(p Proto, addr netip.AddrPort) (*os.File, error)

// Create calls f.
func (f CreatorFunc) Create(p Proto, addr netip.AddrPort) (*os.File, error) { return f(p, addr) }

// watchCreator marks the creator gone when done (Config.CreatorDone) is
// closed, or returns when the Server closes.
func (s *Server) watchCreator(done <-chan struct{}) {
	defer s.wg.Done()
	select {
	case <-done:
		s.markCreatorGone(errors.New("the creator process exited"))
	case <-s.stop:
	}
}

// markCreatorGone records that no new socket can be made, and logs it
// once (not while the Server is closing).
func (s *Server) markCreatorGone(why error) {
	s.mu.Lock()
	already, closed := s.creatorGone, s.closed
	s.creatorGone = true
	n := len(s.cache)
	s.mu.Unlock()
	if !already && !closed {
		s.log.Error("SOCKET CREATOR GONE: no new sockets can be created until porter up is restarted; cached sockets are still served",
			"err", why, "cached", n)
	}
}

// CreatorGone reports whether the creator has exited.
func (s *Server) CreatorGone() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.creatorGone
}

// FromCreator adapts a running porter-creator client to Creator. An error
// that means the creator is gone (creator.ErrClosed) also matches
// ErrCreatorGone; a refusal keeps its errno; a shortage of fds in this
// process (fdpass.ErrFDLimit) leaves the creator running. Pass c.Done() as
// Config.CreatorDone so the broker notices an exit between requests.
func FromCreator(c *creator.Client) Creator {
	return CreatorFunc(func(p Proto, addr netip.AddrPort) (*os.File, error) {
		f, err := c.Create(p, addr)
		if errors.Is(err, creator.ErrClosed) {
			return nil, &creatorGone{err}
		}
		return f, err
	})
}

// creatorGone is a creator error that means it is gone: it reads as the
// creator's own error and matches ErrCreatorGone.
type creatorGone struct{ err error }

func (e *creatorGone) Error() string        { return e.err.Error() }
func (e *creatorGone) Unwrap() error        { return e.err }
func (e *creatorGone) Is(target error) bool { return target == ErrCreatorGone }
