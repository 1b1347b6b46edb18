package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// testLog collects the server's log for failure output.
type testLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *testLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

type harness struct {
	t    testing.TB
	srv  *Server
	path string
	log  *testLog
}

// startServer runs a Server on a control socket in a fresh directory that
// every user may enter, with cfg (Creator defaults to newCreator(t)).
func startServer(t testing.TB, cfg Config) *harness {
	t.Helper()
	return startServerWith(t, cfg, nil)
}

// startServerWith is startServer with a hook that may adjust the Server
// before it serves.
func startServerWith(t testing.TB, cfg Config, hook func(*Server)) *harness {
	t.Helper()
	dir := testutil.SharedDir(t)
	if cfg.Creator == nil {
		cfg.Creator = newCreator(t)
	}
	tl := &testLog{}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(tl, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if hook != nil {
		hook(srv)
	}
	path := filepath.Join(dir, SocketName)
	l, err := Listen(path, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	h := &harness{t: t, srv: srv, path: path, log: tl}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil && !errors.Is(err, net.ErrClosed) {
			t.Errorf("serve: %v", err)
		}
		if t.Failed() {
			t.Logf("broker log:\n%s", tl.String())
		}
	})
	return h
}

func (h *harness) dial() *Client {
	h.t.Helper()
	c, err := Dial(h.path)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

// rawConn is a plain SOCK_SEQPACKET connection for sending hand-made bytes.
func (h *harness) raw() *net.UnixConn {
	h.t.Helper()
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: h.path, Net: "unixpacket"})
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

// ask writes b on a raw connection and decodes the one packet that
// answers it.
func ask(t testing.TB, raw *net.UnixConn, b []byte) *message {
	t.Helper()
	if _, err := raw.Write(b); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, MaxMessage)
	n, err := raw.Read(reply)
	if err != nil {
		t.Fatal(err)
	}
	m, err := decode(reply[:n])
	if err != nil {
		t.Fatalf("undecodable reply %x: %v", reply[:n], err)
	}
	return m
}

// The shared test helpers, under the names these tests use.
var (
	waitFor  = testutil.WaitFor
	freePort = testutil.FreePort
)

func loop(port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
}

// inode returns the socket inode behind f.
func inode(t testing.TB, f *os.File) uint64 {
	t.Helper()
	var st unix.Stat_t
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) { err = unix.Fstat(int(fd), &st) })
	if err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// readAll reads what the broker sends on a raw connection until EOF.
func readAll(t testing.TB, c *net.UnixConn) [][]byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var out [][]byte
	for {
		b := make([]byte, MaxMessage)
		n, err := c.Read(b)
		if err == io.EOF || (err == nil && n == 0) {
			return out
		}
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		out = append(out, b[:n])
	}
}

// fdSet describes this process's open fds (number and target), sorted,
// for comparing before and after.
func fdSet() string {
	m := testutil.OpenFDs()
	fds := make([]int, 0, len(m))
	for fd := range m {
		fds = append(fds, fd)
	}
	slices.Sort(fds)
	var b strings.Builder
	for _, fd := range fds {
		fmt.Fprintf(&b, "%d=%s ", fd, m[fd])
	}
	return b.String()
}

// childDial connects a child helper to the broker at $BROKER; nil (after
// printing why) when it cannot.
func childDial() *Client {
	c, err := Dial(os.Getenv("BROKER"))
	if err != nil {
		fmt.Println("dial:", err)
		return nil
	}
	return c
}
