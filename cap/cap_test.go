package cap_test

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/porter-ipc/porter/cap"
	"github.com/porter-ipc/porter/internal/testutil"
)

func TestMain(m *testing.M) {
	testutil.RunChildren(nil)
	os.Exit(m.Run())
}

// Counter is the test object: a number to add to.
type Counter struct {
	mu sync.Mutex
	n  int64
}

type AddArgs struct {
	N int64 `cap:"n"`
}

func (c *Counter) Add(ctx context.Context, a AddArgs) (int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n += a.N
	return c.n, nil
}

func (c *Counter) get() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

func (c *Counter) Fail(ctx context.Context, msg string) (struct{}, error) {
	return struct{}{}, errors.New(msg)
}

func (c *Counter) Block(ctx context.Context, _ struct{}) (struct{}, error) {
	<-ctx.Done()
	return struct{}{}, ctx.Err()
}

func (c *Counter) Echo(ctx context.Context, v any) (any, error) { return v, nil }

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func export(t testing.TB, srv *cap.Server, obj any) *cap.Ref {
	t.Helper()
	r, err := srv.Export(obj)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func newServer(t testing.TB) *cap.Server {
	srv := cap.NewServer()
	t.Cleanup(func() { srv.Close() })
	return srv
}

func TestCallInProcess(t *testing.T) {
	testutil.CheckLeaks(t)
	srv := newServer(t)
	r := export(t, srv, &Counter{})
	ctx := ctxT(t)
	var n int64
	for i := 1; i <= 3; i++ {
		if err := r.Call(ctx, "Add", AddArgs{N: 2}, &n); err != nil {
			t.Fatal(err)
		}
		if n != int64(2*i) {
			t.Fatalf("Add: %d, want %d", n, 2*i)
		}
	}
	err := r.Call(ctx, "Fail", "boom", nil)
	if !errors.Is(err, cap.ErrApplication) {
		t.Fatalf("Fail: %v, want APPLICATION", err)
	}
	if err := r.Call(ctx, "Nope", nil, nil); !errors.Is(err, cap.ErrUnknownMethod) {
		t.Fatalf("Nope: %v", err)
	}
	if err := r.Call(ctx, "Add", "x", nil); !errors.Is(err, cap.ErrBadArgs) {
		t.Fatalf("Add(string): %v", err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := r.Call(short, "Block", struct{}{}, nil); !errors.Is(err, cap.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Block: %v", err)
	}
	var v any
	in := map[string]any{"a": []any{int64(1), "x", []byte("b"), nil, true, 1.5, uint64(7)}}
	if err := r.Call(ctx, "Echo", in, &v); err != nil {
		t.Fatal(err)
	}
	t.Logf("%#v", v)
	if err := srv.Revoke(r); err != nil {
		t.Fatal(err)
	}
	if err := r.Call(ctx, "Add", AddArgs{N: 1}, &n); !errors.Is(err, cap.ErrRevoked) {
		t.Fatalf("after Revoke: %v", err)
	}
	<-r.Done()
	if !errors.Is(r.Err(), cap.ErrRevoked) {
		t.Fatalf("Err: %v", r.Err())
	}
}
