package broker

import (
	"errors"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// grantOnDroppedClient requests the socket at addr (share none) on a
// Client of its own, or picks it up with a token prepared on another,
// and returns only the File: nothing refers to the Client any more.
// collected is closed when the Client has been garbage collected.
//
//go:noinline
func grantOnDroppedClient(t *testing.T, h *harness, addr netip.AddrPort, pickup bool) (f *os.File, collected chan struct{}) {
	c, err := Dial(h.path)
	if err != nil {
		t.Fatal(err)
	}
	collected = make(chan struct{})
	runtime.AddCleanup(c, func(ch chan struct{}) { close(ch) }, collected)
	r := Request{Proto: TCP, Addr: addr, Share: ShareNone, App: "gc"}
	var g *Grant
	if pickup {
		p := h.dial()
		r.Defer = true
		d, err := p.Request(r)
		if err != nil {
			t.Fatal(err)
		}
		g, err = c.Pickup(d.Token)
	} else {
		g, err = c.Request(r)
	}
	if err != nil {
		t.Fatal(err)
	}
	return g.File, collected
}

// gc runs several collection cycles, giving cleanups a chance to run.
func gc() {
	for range 5 {
		runtime.GC()
		runtime.Gosched()
	}
}

// TestGrantKeepsClientAlive: a Client the program dropped is not closed
// by the garbage collector, taking its references with it, while the
// program still has the File of a grant it returned; once the File is
// closed and dropped too, the collector closes the connection and the
// broker releases the reference.
func TestGrantKeepsClientAlive(t *testing.T) {
	for _, pickup := range []bool{false, true} {
		name := "request"
		if pickup {
			name = "pickup"
		}
		t.Run(name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			h := startServer(t, Config{})
			addr := loop(freePort(t))
			f, collected := grantOnDroppedClient(t, h, addr, pickup)
			gc()
			other := h.dial()
			// Ask the broker after its other connection: a close of the
			// dropped Client's connection, if it happened, is seen first.
			held := func() int {
				l, err := other.List()
				if err != nil {
					t.Fatal(err)
				}
				n := 0
				for _, s := range l.Sockets {
					if s.Addr == addr {
						n += len(s.Holders)
					}
				}
				return n
			}
			select {
			case <-collected:
				t.Fatal("the Client was collected while its grant's File is reachable")
			default:
			}
			if n := held(); n != 1 {
				t.Fatalf("after GC the broker lists %d holders of %v, want 1", n, addr)
			}
			if _, err := other.Request(Request{Proto: TCP, Addr: addr, Share: ShareNone, App: "gc"}); !errors.Is(err, ErrConflict) {
				t.Fatalf("second request with share none after GC: %v, want ErrConflict", err)
			}
			if acc, err := unix.GetsockoptInt(testutil.FD(t, f), unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || acc != 1 {
				t.Fatalf("the granted file is no longer a listening socket: %d, %v", acc, err)
			}
			f.Close()
			testutil.WaitFor(t, "the dropped Client to be collected", func() bool {
				runtime.GC()
				select {
				case <-collected:
					return true
				default:
					return false
				}
			})
			testutil.WaitFor(t, "the broker to release the reference", func() bool { return held() == 0 })
		})
	}
}
