package cap_test

import (
	"context"
	"errors"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/porter-ipc/porter/cap"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// Gate holds its calls until released, and counts them.
type Gate struct {
	mu       sync.Mutex
	running  int
	canceled int
	release  chan struct{}
}

func (g *Gate) Wait(ctx context.Context, _ struct{}) (struct{}, error) {
	g.mu.Lock()
	g.running++
	g.mu.Unlock()
	select {
	case <-g.release:
	case <-ctx.Done():
		g.mu.Lock()
		g.canceled++
		g.mu.Unlock()
	}
	g.mu.Lock()
	g.running--
	g.mu.Unlock()
	return struct{}{}, nil
}

func (g *Gate) Panic(ctx context.Context, _ struct{}) (struct{}, error) { panic("oops") }

func (g *Gate) count() (running, canceled int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.running, g.canceled
}

// TestOverloadedAndCancel: a session runs at most MaxCalls calls; one
// more gets OVERLOADED at once; a caller that gives up cancels its call
// in the server.
func TestOverloadedAndCancel(t *testing.T) {
	testutil.CheckLeaks(t)
	srv := newServer(t)
	g := &Gate{release: make(chan struct{})}
	r := export(t, srv, g)
	ctx := ctxT(t)
	errs := make(chan error, cap.MaxCalls)
	for i := 0; i < cap.MaxCalls; i++ {
		go func() { errs <- r.Call(ctx, "Wait", struct{}{}, nil) }()
	}
	testutil.WaitFor(t, "64 calls running", func() bool { n, _ := g.count(); return n == cap.MaxCalls })
	if err := r.Call(ctx, "Wait", struct{}{}, nil); !errors.Is(err, cap.ErrOverloaded) {
		t.Fatalf("call 65: %v", err)
	}
	close(g.release)
	for i := 0; i < cap.MaxCalls; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	g2 := &Gate{release: make(chan struct{})}
	r2 := export(t, srv, g2)
	short, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r2.Call(short, "Wait", struct{}{}, nil) }()
	testutil.WaitFor(t, "the call to run", func() bool { n, _ := g2.count(); return n == 1 })
	cancel()
	if err := <-done; !errors.Is(err, cap.ErrTimeout) || !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled call: %v", err)
	}
	testutil.WaitFor(t, "the method's ctx to end", func() bool { _, c := g2.count(); return c == 1 })
	if err := r.Call(ctx, "Panic", struct{}{}, nil); !errors.Is(err, cap.ErrInternal) {
		t.Fatalf("a panicking method: %v", err)
	}
}

// TestRevokePending: calls running when their object is revoked fail
// with REVOKED; other objects of the server are untouched.
func TestRevokePending(t *testing.T) {
	testutil.CheckLeaks(t)
	srv := newServer(t)
	g := &Gate{release: make(chan struct{})}
	r := export(t, srv, g)
	other := export(t, srv, &Counter{})
	errs := make(chan error, 3)
	for i := 0; i < 3; i++ {
		go func() { errs <- r.Call(context.Background(), "Wait", struct{}{}, nil) }()
	}
	testutil.WaitFor(t, "3 calls running", func() bool { n, _ := g.count(); return n == 3 })
	if err := srv.Revoke(r); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := <-errs; !errors.Is(err, cap.ErrRevoked) {
			t.Fatalf("pending call: %v", err)
		}
	}
	if err := srv.Revoke(r); err == nil {
		t.Fatal("second Revoke succeeded")
	}
	if err := other.Call(ctxT(t), "Add", AddArgs{N: 1}, nil); err != nil {
		t.Fatal(err)
	}
}

// Files passes files through.
type Files struct{}

func (Files) Count(ctx context.Context, fs []*os.File) (int, error) {
	for _, f := range fs {
		f.Close()
	}
	return len(fs), nil
}

func (Files) Back(ctx context.Context, n int) ([]*os.File, error) {
	return FileSink{}.Files(ctx, n)
}

// TestManyFDs: frames with more than 253 fds travel in FDS packets, both
// ways, up to 1,024; more is TOO_LARGE before anything is sent.
func TestManyFDs(t *testing.T) {
	// No GC: an *os.File's finalizer would close a leaked fd and hide it.
	// (Restored after the leak check, which runs first.)
	gc := debug.SetGCPercent(-1)
	t.Cleanup(func() { debug.SetGCPercent(gc) })
	testutil.CheckLeaks(t)
	srv := newServer(t)
	r := export(t, srv, Files{})
	ctx := ctxT(t)
	fs := pipeFiles(t, 1024)
	var n int
	if err := r.Call(ctx, "Count", fs, &n); err != nil || n != 1024 {
		t.Fatalf("1024 fds: %d, %v", n, err)
	}
	if err := r.Call(ctx, "Count", append(fs, fs[0]), &n); !errors.Is(err, cap.ErrTooLarge) {
		t.Fatalf("1025 fds: %v", err)
	}
	var back []*os.File
	if err := r.Call(ctx, "Back", 600, &back); err != nil || len(back) != 600 {
		t.Fatalf("600 fds back: %d, %v", len(back), err)
	}
	for _, f := range back {
		f.Close()
	}
	before := len(testutil.OpenFDs())
	if err := r.Call(ctx, "Back", 1025, &back); !errors.Is(err, cap.ErrTooLarge) {
		t.Fatalf("1025 fds back: %v", err)
	}
	if after := len(testutil.OpenFDs()); after != before {
		t.Fatalf("a result too large left %d fds open", after-before)
	}
	big := make([]byte, cap.MaxFrame)
	if err := r.Call(ctx, "Count", big, &n); !errors.Is(err, cap.ErrTooLarge) {
		t.Fatalf("a 64 KiB argument: %v", err)
	}
	if err := export(t, srv, Big{}).Call(ctx, "Get", cap.MaxFrame, nil); !errors.Is(err, cap.ErrTooLarge) {
		t.Fatalf("a 64 KiB result: %v", err)
	}
}

// TestForgottenWithLastHolder: when every Ref to an object is closed the
// server forgets it (Revoke no longer finds it).
func TestForgottenWithLastHolder(t *testing.T) {
	testutil.CheckLeaks(t)
	srv := newServer(t)
	r, err := srv.Export(&Counter{})
	if err != nil {
		t.Fatal(err)
	}
	r2 := mustDup(t, r)
	if err := r2.Call(ctxT(t), "Add", AddArgs{N: 1}, nil); err != nil {
		t.Fatal(err)
	}
	f, err := r.File()
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	if err := r2.Call(ctxT(t), "Add", AddArgs{N: 1}, nil); err != nil {
		t.Fatalf("a counted Ref after another was closed: %v", err)
	}
	r2.Close()
	if err := r2.Call(ctxT(t), "Add", AddArgs{N: 1}, nil); !errors.Is(err, cap.ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	// f, an fd of the door, still holds the object.
	r3, err := cap.FromFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Revoke(r3); err != nil {
		t.Fatalf("the object with an fd left: %v", err)
	}
	r3.Close()
	r4, _ := srv.Export(&Counter{})
	r5 := mustDup(t, r4)
	r4.Close()
	r5.Close()
	// Forgotten: nothing of it stays in the server.
	testutil.WaitFor(t, "the object to be forgotten", func() bool {
		r6, _ := srv.Export(&Counter{})
		defer r6.Close()
		return srv.Revoke(r4) != nil
	})
}

// TestMalformedSession: frames that break the rules end their session
// and nothing else.
func TestMalformedSession(t *testing.T) {
	testutil.CheckLeaks(t)
	srv := newServer(t)
	r := export(t, srv, &Counter{})
	door, err := r.File()
	if err != nil {
		t.Fatal(err)
	}
	defer door.Close()
	d := testutil.FD(t, door)
	pr, pw, _ := os.Pipe()
	defer pr.Close()
	defer pw.Close()
	for _, c := range []struct {
		name  string
		frame []byte
		fds   []int
	}{
		{"unknown type", rawFrame(12, 0, 0, 0, "", nil), nil},
		{"flags", append(rawFrame(9, 0, 0, 0, "", nil)[:2], append([]byte{1, 0}, rawFrame(9, 0, 0, 0, "", nil)[4:]...)...), nil},
		{"REPLY from a client", rawFrame(4, 0, 1, 0, "", []byte{0}), nil},
		{"OPEN on a session", rawFrame(1, 1, 0, 0, "", nil), []int{testutil.FD(t, pw)}},
		{"fds on CANCEL", rawFrame(6, 1, 1, 0, "", nil), []int{testutil.FD(t, pw)}},
		{"FDS alone", rawFrame(8, 1, 0, 0, "", nil), []int{testutil.FD(t, pw)}},
		{"fewer fds than nfds", rawFrame(3, 2, 1, 0, "Add", []byte{0}), []int{testutil.FD(t, pw)}},
		{"short", []byte{1, 3, 0}, nil},
		{"empty packet", nil, nil},
	} {
		s, _, err := rawOpen(d)
		if err != nil {
			t.Fatal(err)
		}
		if len(c.fds) > 0 {
			if err := unix.Sendmsg(s, c.frame, unix.UnixRights(c.fds...), nil, 0); err != nil {
				t.Fatal(err)
			}
		} else if _, err := unix.Write(s, c.frame); err != nil {
			t.Fatal(err)
		}
		if c.name == "fewer fds than nfds" {
			unix.Write(s, rawFrame(9, 0, 0, 0, "", nil))
		}
		buf := make([]byte, 64)
		if n, err := unix.Read(s, buf); n != 0 || err != nil {
			t.Errorf("%s: the session answered %d bytes (%v), want end of file", c.name, n, err)
		}
		unix.Close(s)
	}
	var n int64
	if err := r.Call(ctxT(t), "Add", AddArgs{N: 1}, &n); err != nil || n != 1 {
		t.Fatalf("the server after malformed sessions: %d, %v", n, err)
	}
}

// TestAPIErrors: bad uses fail with clear errors.
func TestAPIErrors(t *testing.T) {
	testutil.CheckLeaks(t)
	srv := newServer(t)
	if _, err := srv.Export(struct{}{}); err == nil || !strings.Contains(err.Error(), "no method") {
		t.Errorf("Export of no methods: %v", err)
	}
	if _, err := srv.Export(cap.Methods{"Add": func(int) int { return 0 }}); err == nil {
		t.Error("Export of a bad func")
	}
	m := export(t, srv, cap.Methods{"Twice": func(ctx context.Context, n int) (int, error) { return 2 * n, nil }})
	var n int
	if err := m.Call(ctxT(t), "Twice", 21, &n); err != nil || n != 42 {
		t.Errorf("Methods: %d, %v", n, err)
	}
	if err := m.Call(ctxT(t), "bad-name", nil, nil); !errors.Is(err, cap.ErrUnknownMethod) {
		t.Errorf("bad method name: %v", err)
	}
	if err := m.Call(ctxT(t), "Twice", make(chan int), nil); !errors.Is(err, cap.ErrBadArgs) {
		t.Errorf("unencodable args: %v", err)
	}
	var s string
	if err := m.Call(ctxT(t), "Twice", 1, &s); !errors.Is(err, cap.ErrBadArgs) || !strings.Contains(err.Error(), "result") {
		t.Errorf("result into the wrong type: %v", err)
	}
	if _, err := cap.Inherit("NOPE_NOT_SET"); err == nil {
		t.Error("Inherit of an unset name")
	}
	if _, err := cap.Inherit("bad name"); err == nil {
		t.Error("Inherit of a bad name")
	}
	os.Setenv("PORTER_CAP_T1", "x")
	if _, err := cap.Inherit("T1"); err == nil {
		t.Error("Inherit of a non-number")
	}
	// Done and Err: exactly one notice, shared by the Refs of one object.
	r := export(t, srv, &Counter{})
	r2 := mustDup(t, r)
	defer r2.Close()
	if _, err := r.Cookie(ctxT(t)); err != nil { // a session, to tell REVOKED
		t.Fatal(err)
	}
	if r.Err() != nil {
		t.Fatalf("Err before the end: %v", r.Err())
	}
	srv.Revoke(r)
	<-r.Done()
	<-r2.Done()
	if !errors.Is(r.Err(), cap.ErrRevoked) || r.Err() != r2.Err() {
		t.Fatalf("Err: %v, %v", r.Err(), r2.Err())
	}
	select {
	case <-time.After(0):
	case <-r.Done():
	}
}
