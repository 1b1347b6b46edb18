package broker

import (
	"errors"
	"net/netip"
	"os"

	"github.com/porter-ipc/porter/creator"
)

// FromCreator adapts a running porter-creator client to Creator. An error
// that means the creator is gone (creator.ErrClosed) also matches
// ErrCreatorGone; a refusal keeps its errno; a shortage of fds in this
// process (fdpass.ErrFDLimit) leaves the creator running. Pass c.Done() as
// Config.CreatorDone so the broker notices an exit between requests.
func FromCreator(c *creator.Client) Creator {
	return CreatorFunc(func(p Proto, addr netip.AddrPort) (*os.File, error) {
		f, err := c.Create(creator.Proto(p), addr)
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
