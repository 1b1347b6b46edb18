// Package brokertest runs a broker.Server for tests of packages that use
// the broker (the module root's client API, cmd/porter).
package brokertest

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/porter-ipc/porter/broker"
	"golang.org/x/sys/unix"
)

// Broker is a running test broker.
type Broker struct {
	*broker.Server
	Path string // its control socket
	log  *logBuf
}

type logBuf struct {
	mu sync.Mutex
	b  []byte
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

// Log returns what the broker logged so far.
func (b *Broker) Log() string {
	b.log.mu.Lock()
	defer b.log.mu.Unlock()
	return string(b.log.b)
}

// Start runs a broker with cfg on a control socket (mode 0666) in a fresh
// directory every user may enter, and stops it when the test ends. When
// cfg.Creator is nil it binds in-process with Bind (the test runs as root
// for low ports).
func Start(t testing.TB, cfg broker.Config) *Broker {
	t.Helper()
	dir, err := os.MkdirTemp("", "porter-broker-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	if cfg.Creator == nil {
		cfg.Creator = broker.CreatorFunc(Bind)
	}
	lb := &logBuf{}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	srv, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, broker.SocketName)
	l, err := broker.Listen(path, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	b := &Broker{Server: srv, Path: path, log: lb}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("broker shutdown: %v", err)
		}
		if err := <-done; err != nil && !errors.Is(err, net.ErrClosed) {
			t.Errorf("broker serve: %v", err)
		}
		if t.Failed() {
			t.Logf("broker log:\n%s", b.Log())
		}
	})
	return b
}

// Bind creates a bound socket in-process the way porter-creator does
// (SO_REUSEADDR, IPV6_V6ONLY for IPv6, blocking, close-on-exec).
func Bind(p broker.Proto, a netip.AddrPort) (*os.File, error) {
	typ, fam := unix.SOCK_STREAM, unix.AF_INET
	if p == broker.UDP {
		typ = unix.SOCK_DGRAM
	}
	var sa unix.Sockaddr = &unix.SockaddrInet4{Port: int(a.Port()), Addr: a.Addr().As4()}
	if a.Addr().Is6() {
		fam = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(a.Port()), Addr: a.Addr().As16()}
	}
	fd, err := unix.Socket(fam, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if fam == unix.AF_INET6 {
		unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("bind", err)
	}
	return os.NewFile(uintptr(fd), "socket"), nil
}

// FreePort returns a port free for TCP and UDP on 127.0.0.1 right now.
func FreePort(t testing.TB) uint16 {
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

// WaitFor polls cond until it holds, failing the test after 10 seconds.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
