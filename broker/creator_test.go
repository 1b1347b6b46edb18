package broker

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/porter-ipc/porter/creator"
	"github.com/porter-ipc/porter/internal/testutil"
)

// creatorPath is the porter-creator built for this test run.
var creatorPath string

func TestMain(m *testing.M) {
	testutil.RunChildren(map[string]func() int{"release": childRelease, "pickup": childPickup, "request": childRequest})
	testutil.MainWithCommands(m, func(dir string) { creatorPath = filepath.Join(dir, creator.Name) }, "./cmd/porter-creator")
}

// newCreator starts a real porter-creator for the test, stopped when the
// test ends.
func newCreator(t testing.TB) Creator {
	t.Helper()
	c, err := creator.Start(creatorPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return FromCreator(c)
}

// TestCreatorKilled: kill -9 of the real creator process. The broker
// notices through Done, keeps serving the cached socket, and refuses a new
// one with ErrCreatorGone, whether it learns of the death from Done or
// from the request that found the creator gone.
func TestCreatorKilled(t *testing.T) {
	testutil.CheckLeaks(t)
	for _, viaDone := range []bool{true, false} {
		c, err := creator.Start(creatorPath)
		if err != nil {
			t.Fatal(err)
		}
		cfg := Config{Creator: FromCreator(c)}
		if viaDone {
			cfg.CreatorDone = c.Done()
		}
		h := startServer(t, cfg)
		cl := h.dial()
		addr := loop(freePort(t))
		g, err := cl.Request(Request{Proto: UDP, Addr: addr, Share: ShareAny})
		if err != nil {
			t.Fatal(err)
		}
		g.File.Close()
		if err := syscall.Kill(c.Pid(), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-c.Done()
		if viaDone {
			waitFor(t, "the broker to notice", h.srv.CreatorGone)
		}
		g2, err := cl.Request(Request{Proto: UDP, Addr: addr, Share: ShareAny})
		if err != nil {
			t.Fatalf("cached socket after kill -9 of the creator: %v", err)
		}
		g2.File.Close()
		_, err = cl.Request(Request{Proto: UDP, Addr: loop(freePort(t)), Share: ShareAny})
		if !errors.Is(err, ErrCreatorGone) {
			t.Fatalf("new socket after kill -9 of the creator: %v, want ErrCreatorGone", err)
		}
		// Every part of the message says something ("porter broker: :
		// creator gone" had an empty one), in the answer and the log.
		if text := err.Error() + "\n" + h.log.String(); strings.Contains(text, ": :") {
			t.Fatalf("an error with an empty part:\n%s", text)
		}
		if !h.srv.CreatorGone() {
			t.Error("the broker does not know its creator is gone")
		}
		c.Close()
	}
}

// TestPortZeroCollision: with SO_REUSEADDR the kernel may give a port-0
// UDP socket a port a cached socket already has. The broker must not
// cache it under that address; it asks the creator for another.
func TestPortZeroCollision(t *testing.T) {
	testutil.CheckLeaks(t)
	real := newCreator(t)
	var calls atomic.Int32
	var first atomic.Pointer[netip.AddrPort]
	cr := CreatorFunc(func(p Proto, a netip.AddrPort) (*os.File, error) {
		n := calls.Add(1)
		if n == 2 {
			// The kernel's bad luck, on purpose: the port of the first.
			return real.Create(p, *first.Load())
		}
		return real.Create(p, a)
	})
	h := startServer(t, Config{Creator: cr})
	c := h.dial()
	any0 := netip.MustParseAddrPort("127.0.0.1:0")
	g1, err := c.Request(Request{Proto: UDP, Addr: any0, Share: ShareNone})
	if err != nil {
		t.Fatal(err)
	}
	g1.File.Close()
	first.Store(&g1.Addr)
	g2, err := c.Request(Request{Proto: UDP, Addr: any0, Share: ShareNone})
	if err != nil {
		t.Fatalf("second port-0 request: %v", err)
	}
	g2.File.Close()
	if g2.Addr == g1.Addr || calls.Load() != 3 {
		t.Fatalf("second socket %v (first %v) after %d creations, want another port after 3", g2.Addr, g1.Addr, calls.Load())
	}
	if n := len(h.srv.List().Sockets); n != 2 {
		t.Fatalf("%d cached sockets, want 2", n)
	}
}

// TestSentinelText: a sentinel has no operation or address; its text
// has no empty parts.
func TestSentinelText(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{ErrCreatorGone, "porter broker: creator gone"},
		{&Error{Code: CodeQuota, Text: "full"}, "porter broker: quota exceeded: full"},
		{&Error{Addr: loop(80), Proto: TCP, Code: CodeDenied}, "porter broker: tcp://127.0.0.1:80: denied by policy"},
		{&Error{Op: "list", Code: CodeShuttingDown}, "porter broker: list: broker shutting down"},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("%#v: %q, want %q", tc.err, got, tc.want)
		}
	}
}
