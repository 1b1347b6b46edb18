package broker

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/porter-ipc/porter/creator"
)

// FromCreator adapts a running porter-creator client to Creator. An error
// that means the creator is gone (creator.ErrClosed) also wraps
// ErrCreatorGone; a refusal keeps its errno. Pass c.Done() as
// Config.CreatorDone so the broker notices an exit between requests.
func FromCreator(c *creator.Client) Creator {
	return CreatorFunc(func(p Proto, addr netip.AddrPort) (*os.File, error) {
		f, err := c.Create(creator.Proto(p), addr)
		if errors.Is(err, creator.ErrClosed) {
			return nil, fmt.Errorf("%w: %w", ErrCreatorGone, err)
		}
		return f, err
	})
}
