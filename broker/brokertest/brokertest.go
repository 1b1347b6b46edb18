// Package brokertest runs a broker.Server for tests of packages that use
// the broker (the module root's client API, cmd/porter).
package brokertest

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/porter-ipc/porter/broker"
	"github.com/porter-ipc/porter/creator"
	"github.com/porter-ipc/porter/internal/testutil"
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

// CreatorPath is the porter-creator that Start runs when cfg.Creator is
// nil; set it from TestMain (testutil.MainWithCommands builds it).
var CreatorPath string

// Start runs a broker with cfg on a control socket (mode 0666) in a fresh
// directory every user may enter, and stops it when the test ends. When
// cfg.Creator is nil it starts the real creator at CreatorPath.
func Start(t testing.TB, cfg broker.Config) *Broker {
	t.Helper()
	dir := testutil.SharedDir(t)
	if cfg.Creator == nil {
		if CreatorPath == "" {
			t.Fatal("brokertest: set CreatorPath in TestMain (testutil.MainWithCommands)")
		}
		cr, err := creator.Start(CreatorPath)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cr.Close() })
		cfg.Creator, cfg.CreatorDone = broker.FromCreator(cr), cr.Done()
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
