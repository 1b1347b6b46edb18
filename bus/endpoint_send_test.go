package bus

import (
	"context"
	"testing"
	"time"

	"github.com/porter-ipc/porter/internal/testutil"
)

// A callee that stops reading fills the channel's socket buffer; a caller
// then waits no longer than its context, and nothing is half sent.
func TestEndpointSendTimeout(t *testing.T) {
	testutil.CheckLeaks(t)
	// On the routed path the master bounds it instead (QUEUE_FULL to the
	// sender: TestMasterStuckReceiver).
	{
		m := busMaster(t)
		release := make(chan struct{})
		stuck := dial(t, m, Options{Handler: func(ctx context.Context, c *Call) (*Message, error) {
			select { // the first call blocks the channel's reader
			case <-release:
			case <-ctx.Done():
			}
			return &Message{}, nil
		}})
		defer close(release)
		caller := dial(t, m, Options{})
		dest := FormatAddress(stuck.Address())
		body := make([]byte, 32<<10)
		timedOut := false
		for i := 0; i < 10000 && !timedOut; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			_, err := caller.Call(ctx, dest, &Message{Member: "Fill", Flags: FlagNoReplyExpected, Body: body})
			cancel()
			switch code := CodeOf(err); {
			case err == nil:
			case code == CodeTimeout:
				timedOut = true
			default:
				t.Fatalf("send %d: %v", i, err)
			}
		}
		if !timedOut {
			t.Fatal("10,000 × 32 KiB to an endpoint that does not read never blocked")
		}
	}
}
