package cap_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/porter-ipc/porter/cap"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// Board is where processes of a test leave Refs for each other: the test
// process serves it, children inherit it as PORTER_CAP_BOARD.
type Board struct {
	mu sync.Mutex
	m  map[string]*cap.Ref
	ch chan struct{} // closed and replaced at each Put
}

func newBoard() *Board { return &Board{m: map[string]*cap.Ref{}, ch: make(chan struct{})} }

// PutArgs is Board.Put's argument.
type PutArgs struct {
	Name string
	Ref  *cap.Ref
}

// Put keeps a.Ref under a.Name.
func (b *Board) Put(ctx context.Context, a PutArgs) (struct{}, error) {
	if a.Ref == nil {
		return struct{}{}, errors.New("no ref")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if old := b.m[a.Name]; old != nil {
		old.Close()
	}
	b.m[a.Name] = a.Ref
	close(b.ch)
	b.ch = make(chan struct{})
	return struct{}{}, nil
}

// Get returns the Ref under name, waiting until there is one.
func (b *Board) Get(ctx context.Context, name string) (*cap.Ref, error) {
	for {
		b.mu.Lock()
		r, ch := b.m[name], b.ch
		b.mu.Unlock()
		if r != nil {
			return r, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (b *Board) get(t testing.TB, name string) *cap.Ref {
	t.Helper()
	r, err := b.Get(ctxT(t), name)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (b *Board) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for k, r := range b.m {
		r.Close()
		delete(b.m, k)
	}
}

// serveBoard exports a Board in this process.
func serveBoard(t testing.TB) (*cap.Server, *Board, *cap.Ref) {
	srv := newServer(t)
	b := newBoard()
	t.Cleanup(b.close)
	return srv, b, export(t, srv, b)
}

// child is a running helper process.
type child struct {
	cmd   *exec.Cmd
	out   *bufio.Reader
	stdin io.WriteCloser
	t     testing.TB
}

// startChild starts the helper name with env and the capabilities caps
// (PORTER_CAP_<key>), stdin and stdout piped. asUID >= 0 runs it as that
// user. The test's end closes its stdin and waits for it.
func startChild(t testing.TB, name string, asUID, asGID int, env []string, caps map[string]*cap.Ref) *child {
	t.Helper()
	cmd := testutil.Child(t, name, asUID, asGID)
	cmd.Env = append(cmd.Env, env...)
	for k, r := range caps {
		if err := cap.ToChild(cmd, k, r); err != nil {
			t.Fatal(err)
		}
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, out: bufio.NewReader(out), stdin: in, t: t}
	t.Cleanup(func() {
		in.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil && cmd.ProcessState != nil && !cmd.ProcessState.Exited() {
				return // killed by the test
			}
			if err != nil {
				t.Errorf("child %s: %v", name, err)
			}
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("child %s did not exit", name)
		}
	})
	return c
}

// line reads the child's next line of output.
func (c *child) line() string {
	c.t.Helper()
	s, err := c.out.ReadString('\n')
	if err != nil {
		c.t.Fatalf("child's output: %v (read %q)", err, s)
	}
	return strings.TrimSpace(s)
}

// expect reads lines until one starts with prefix, and returns the rest.
func (c *child) expect(prefix string) string {
	c.t.Helper()
	for {
		l := c.line()
		if rest, ok := strings.CutPrefix(l, prefix); ok {
			return strings.TrimSpace(rest)
		}
	}
}

// childRun is the body of a helper: it gets a context that ends when its
// stdin closes, and exits 0 unless fn fails.
func childRun(fn func(ctx context.Context) error) func() int {
	return func() int {
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			io.Copy(io.Discard, os.Stdin)
			cancel()
		}()
		if err := fn(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			return 1
		}
		return 0
	}
}

func say(format string, a ...any) { fmt.Printf(format+"\n", a...) }

func inherit(name string) *cap.Ref {
	r, err := cap.Inherit(name)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	return r
}

func fdCount(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(ents)
}

func init() {
	testutil.RegisterChild("cap-user", childRun(childUser))
	testutil.RegisterChild("cap-echo-user", childRun(childEchoUser))
	testutil.RegisterChild("cap-receiver", childRun(childReceiver))
	testutil.RegisterChild("cap-sink", childRun(childSink))
	testutil.RegisterChild("cap-relay", childRun(childRelay))
	testutil.RegisterChild("cap-blocker", childRun(childBlocker))
	testutil.RegisterChild("cap-attacker", childAttacker)
	testutil.RegisterChild("cap-fdserver", childRun(childFDServer))
	testutil.RegisterChild("cap-fdclient", childRun(childFDClient))
	testutil.RegisterChild("cap-refs", childRun(childTooManyRefs))
}

// childUser serves an Echo object of its own and puts it on the board,
// uses the board's "c1", watches it and says how it ended.
func childUser(ctx context.Context) error {
	board := inherit("BOARD")
	defer board.Close()
	srv := cap.NewServer()
	defer srv.Close()
	e, err := srv.Export(&Counter{})
	if err != nil {
		return err
	}
	if err := board.Call(ctx, "Put", PutArgs{Name: "e1", Ref: e}, nil); err != nil {
		return err
	}
	e.Close() // the board holds it now
	var c1 *cap.Ref
	if err := board.Call(ctx, "Get", "c1", &c1); err != nil {
		return err
	}
	defer c1.Close()
	var n int64
	if err := c1.Call(ctx, "Add", AddArgs{N: 5}, &n); err != nil {
		return err
	}
	say("added %d", n)
	<-c1.Done() // opens the session now: report after it is open
	say("ended %v", c1.Err())
	err = c1.Call(ctx, "Add", AddArgs{N: 1}, &n)
	say("next call %v", errors.Is(err, cap.ErrRevoked))
	<-ctx.Done()
	return nil
}

// childEchoUser calls the capability E it inherited.
func childEchoUser(ctx context.Context) error {
	e := inherit("E")
	defer e.Close()
	var n int64
	if err := e.Call(ctx, "Add", AddArgs{N: 7}, &n); err != nil {
		return err
	}
	say("got %d", n)
	<-ctx.Done()
	return nil
}

// TestProcessesDelegateUseRevokeWatch: three processes. A child serves
// an object and delegates it to the test process (through the board),
// which hands it to a second child at its start; the first child uses an
// object of the test process, watches it, and sees it revoked.
func TestProcessesDelegateUseRevokeWatch(t *testing.T) {
	testutil.CheckLeaks(t)
	srv, board, br := serveBoard(t)
	c1obj := &Counter{}
	c1 := export(t, srv, c1obj)
	if _, err := board.Put(ctxT(t), PutArgs{Name: "c1", Ref: mustDup(t, c1)}); err != nil {
		t.Fatal(err)
	}
	u := startChild(t, "cap-user", -1, -1, nil, map[string]*cap.Ref{"BOARD": br})
	if got := u.expect("added"); got != "5" {
		t.Fatalf("child added: %s", got)
	}
	// The child's own object, delegated to us and on to another child.
	e1 := board.get(t, "e1")
	var n int64
	if err := e1.Call(ctxT(t), "Add", AddArgs{N: 1}, &n); err != nil || n != 1 {
		t.Fatalf("e1.Add: %d, %v", n, err)
	}
	eu := startChild(t, "cap-echo-user", -1, -1, nil, map[string]*cap.Ref{"E": e1})
	if got := eu.expect("got"); got != "8" {
		t.Fatalf("second child got %s", got)
	}
	// Revoke c1: the watching child is told once, and its next call fails.
	if err := srv.Revoke(c1); err != nil {
		t.Fatal(err)
	}
	if got := u.expect("ended"); !strings.Contains(got, "REVOKED") {
		t.Fatalf("death notice: %s", got)
	}
	if got := u.expect("next call"); got != "true" {
		t.Fatalf("next call after revoke is ErrRevoked: %s", got)
	}
	if err := c1.Call(ctxT(t), "Add", AddArgs{N: 1}, nil); !errors.Is(err, cap.ErrGone) && !errors.Is(err, cap.ErrRevoked) {
		t.Fatalf("the server's own Ref after Revoke: %v", err)
	}
	// The child serving e1 exits: its object is gone for us.
	u.stdin.Close()
	select {
	case <-e1.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("no death notice for e1")
	}
	if !errors.Is(e1.Err(), cap.ErrServerGone) {
		t.Fatalf("e1.Err: %v", e1.Err())
	}
	if err := e1.Call(ctxT(t), "Add", AddArgs{N: 1}, nil); !errors.Is(err, cap.ErrGone) {
		t.Fatalf("call after the server died: %v", err)
	}
}

func mustDup(t testing.TB, r *cap.Ref) *cap.Ref {
	d, err := r.Dup()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// childReceiver gets the board's "c" 1,000 times, keeping every Ref, and
// says how many fds it had before and after.
func childReceiver(ctx context.Context) error {
	board := inherit("BOARD")
	defer board.Close()
	var first *cap.Ref
	if err := board.Call(ctx, "Get", "c", &first); err != nil {
		return err
	}
	if err := first.Call(ctx, "Add", AddArgs{N: 1}, nil); err != nil {
		return err
	}
	before := fdCount(os.Getpid())
	refs := []*cap.Ref{first}
	for i := 1; i < 1000; i++ {
		var r *cap.Ref
		if err := board.Call(ctx, "Get", "c", &r); err != nil {
			return err
		}
		refs = append(refs, r)
	}
	after := fdCount(os.Getpid())
	// Every Ref works, and closing all but one keeps the door.
	for _, r := range refs[1:] {
		r.Close()
	}
	if err := first.Call(ctx, "Add", AddArgs{N: 1}, nil); err != nil {
		return err
	}
	first.Close()
	say("fds %d %d", before, after)
	<-ctx.Done()
	return nil
}

// TestSameCapabilityManyTimes: a process that receives the same
// capability 1,000 times keeps one fd for it.
func TestSameCapabilityManyTimes(t *testing.T) {
	testutil.CheckLeaks(t)
	srv, board, br := serveBoard(t)
	c := export(t, srv, &Counter{})
	board.Put(ctxT(t), PutArgs{Name: "c", Ref: mustDup(t, c)})
	ch := startChild(t, "cap-receiver", -1, -1, nil, map[string]*cap.Ref{"BOARD": br})
	var before, after int
	if _, err := fmt.Sscanf(ch.expect("fds"), "%d %d", &before, &after); err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Fatalf("fds before 1,000 receipts: %d, after: %d", before, after)
	}
}

// Sink takes Refs and closes them.
type Sink struct{ n atomic.Int64 }

// Take counts r, checks that it works every 10,000th time, and closes it.
func (s *Sink) Take(ctx context.Context, r *cap.Ref) (int64, error) {
	defer r.Close()
	n := s.n.Add(1)
	if n%10000 == 0 {
		if err := r.Call(ctx, "Add", AddArgs{N: 1}, nil); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// Relay passes each Ref it gets on to the sink.
type Relay struct{ sink *cap.Ref }

// Pass hands r to the sink and closes it.
func (rl *Relay) Pass(ctx context.Context, r *cap.Ref) (int64, error) {
	defer r.Close()
	var n int64
	err := rl.sink.Call(ctx, "Take", r, &n)
	return n, err
}

func setNofile(n uint64) error {
	lim := unix.Rlimit{Cur: n, Max: n}
	return unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
}

func childSink(ctx context.Context) error {
	board := inherit("BOARD")
	defer board.Close()
	srv := cap.NewServer()
	defer srv.Close()
	s, err := srv.Export(&Sink{})
	if err != nil {
		return err
	}
	if err := board.Call(ctx, "Put", PutArgs{Name: "sink", Ref: s}, nil); err != nil {
		return err
	}
	s.Close()
	say("ready")
	<-ctx.Done()
	return nil
}

func childRelay(ctx context.Context) error {
	if v := os.Getenv("CAP_NOFILE"); v != "" {
		n, _ := strconv.Atoi(v)
		if err := setNofile(uint64(n)); err != nil {
			return err
		}
	}
	board := inherit("BOARD")
	defer board.Close()
	var sink *cap.Ref
	if err := board.Call(ctx, "Get", "sink", &sink); err != nil {
		return err
	}
	defer sink.Close()
	srv := cap.NewServer()
	defer srv.Close()
	r, err := srv.Export(&Relay{sink: sink})
	if err != nil {
		return err
	}
	if err := board.Call(ctx, "Put", PutArgs{Name: "relay", Ref: r}, nil); err != nil {
		return err
	}
	r.Close()
	say("ready")
	<-ctx.Done()
	say("retries %d", cap.RefsRetries())
	return nil
}

// TestDelegationChain: 100,000 delegations of one capability through a
// chain of three processes (the test, a relay, a sink), with every
// process's fd table as large at the end as after the first delegations.
// The relay runs with RLIMIT_NOFILE 24: as nobody, so the user's fds in
// flight pass its limit and the kernel's ETOOMANYREFS is handled by
// waiting, not failing.
func TestDelegationChain(t *testing.T) {
	testutil.CheckLeaks(t)
	const total, workers = 100000, 32
	srv, board, br := serveBoard(t)
	x := export(t, srv, &Counter{})
	caps := map[string]*cap.Ref{"BOARD": br}
	sink := startChild(t, "cap-sink", -1, -1, nil, caps)
	relay := startChild(t, "cap-relay", -1, -1, []string{"CAP_NOFILE=24"}, caps)
	sink.expect("ready")
	relay.expect("ready")
	rl := board.get(t, "relay")
	ctx := ctxT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	pass := func(n int) {
		var wg sync.WaitGroup
		var next atomic.Int64
		errs := make(chan error, workers)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= int64(n) {
					if err := rl.Call(ctx, "Pass", x, nil); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	pass(1000) // every session open, every goroutine's buffers made
	pids := []int{os.Getpid(), relay.cmd.Process.Pid, sink.cmd.Process.Pid}
	start := make([]int, len(pids))
	for i, p := range pids {
		start[i] = fdCount(p)
	}
	t0 := time.Now()
	pass(total)
	t.Logf("%d delegations through 3 processes in %v (%.0f/s); fds at start %v", total, time.Since(t0), total/time.Since(t0).Seconds(), start)
	for i, p := range pids {
		testutil.WaitFor(t, fmt.Sprintf("process %d's fd table back to %d (now %d)", p, start[i], fdCount(p)), func() bool {
			return fdCount(p) <= start[i]
		})
	}
	var n int64
	if err := x.Call(ctx, "Add", AddArgs{}, &n); err != nil || n != total/10000+1000/10000 {
		t.Fatalf("the sink's checks: %d, %v", n, err)
	}
	relay.stdin.Close()
	t.Logf("waits on ETOOMANYREFS: relay %s, test process %d", relay.expect("retries"), cap.RefsRetries())
}

// Blocker blocks in Block until its caller gives up, after saying so.
type Blocker struct{}

// Block says "blocking" on stdout and waits for ctx.
func (Blocker) Block(ctx context.Context, _ struct{}) (struct{}, error) {
	say("blocking")
	<-ctx.Done()
	return struct{}{}, nil
}

func childBlocker(ctx context.Context) error {
	board := inherit("BOARD")
	defer board.Close()
	srv := cap.NewServer()
	defer srv.Close()
	b, err := srv.Export(Blocker{})
	if err != nil {
		return err
	}
	if err := board.Call(ctx, "Put", PutArgs{Name: "blocker", Ref: b}, nil); err != nil {
		return err
	}
	b.Close()
	<-ctx.Done()
	return nil
}

// TestServerKilledMidCall: calls pending when their server dies fail at
// once with SERVER_GONE (no deadline needed), the death notice fires once
// and later calls fail with GONE.
func TestServerKilledMidCall(t *testing.T) {
	testutil.CheckLeaks(t)
	_, board, br := serveBoard(t)
	ch := startChild(t, "cap-blocker", -1, -1, nil, map[string]*cap.Ref{"BOARD": br})
	b := board.get(t, "blocker")
	errs := make(chan error, 3)
	for i := 0; i < 3; i++ {
		go func() { errs <- b.Call(context.Background(), "Block", struct{}{}, nil) }()
	}
	for i := 0; i < 3; i++ {
		ch.expect("blocking")
	}
	ch.cmd.Process.Kill()
	for i := 0; i < 3; i++ {
		if err := <-errs; !errors.Is(err, cap.ErrServerGone) {
			t.Fatalf("pending call: %v, want SERVER_GONE", err)
		}
	}
	<-b.Done()
	if !errors.Is(b.Err(), cap.ErrServerGone) {
		t.Fatalf("death notice: %v", b.Err())
	}
	if err := b.Call(ctxT(t), "Block", struct{}{}, nil); !errors.Is(err, cap.ErrGone) {
		t.Fatalf("call after death: %v", err)
	}
}

var _ = syscall.SIGKILL
