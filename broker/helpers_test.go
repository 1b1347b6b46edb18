package broker

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

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
	dir, err := os.MkdirTemp("", "porter-broker-test-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
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

// waitFor polls cond until it holds or 10 seconds pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// freePort returns a port that is free on loopback for both TCP and UDP now.
func freePort(t testing.TB) uint16 {
	t.Helper()
	for i := 0; i < 100; i++ {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp4", l.Addr().String())
		l.Close()
		if err == nil {
			u.Close()
			return uint16(port)
		}
	}
	t.Fatal("no free port")
	return 0
}

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
