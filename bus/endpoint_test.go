package bus

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/porter-ipc/porter/fdpass"
	"github.com/porter-ipc/porter/internal/testutil"
)

func TestMain(m *testing.M) {
	testutil.RunChildren(nil)
	os.Exit(m.Run())
}

func init() {
	testutil.RegisterChild("bus-serve", childServe)
}

// busMaster runs a master on a socket in a directory every user may
// enter, until the test ends.
func busMaster(t testing.TB) *Master {
	t.Helper()
	m, err := Listen(filepath.Join(testutil.SharedDir(t), "bus"), nil)
	if err != nil {
		t.Fatal(err)
	}
	serveUntilCleanup(t, m)
	return m
}

// serveUntilCleanup serves m until the test ends (cleanups run last
// first: a later cleanup sees it closed).
func serveUntilCleanup(t testing.TB, m *Master) {
	done := make(chan error, 1)
	go func() { done <- m.Serve() }()
	t.Cleanup(func() {
		m.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

// dial joins m's bus with o, closing the endpoint when the test ends.
func dial(t testing.TB, m *Master, o Options) *Endpoint {
	t.Helper()
	if o.Logf == nil {
		o.Logf = t.Logf
	}
	e, err := DialOptions(context.Background(), m.Addr(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// ctxT is a context that ends with a generous bound, so that a hang
// fails the test instead of the run.
func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// echo is a Handler: Echo returns the body and the files; Who describes
// the caller as the endpoint verified it; Hang waits for ctx; Write
// writes "ok" to every file it got.
func echo(ctx context.Context, c *Call) (*Message, error) {
	switch c.Member {
	case "Echo":
		return &Message{Body: c.Body, Files: c.Files}, nil
	case "Who":
		return &Message{Body: []byte(fmt.Sprintf("%d %d %d %s %s", c.Cred.PID, c.Cred.UID, c.Cred.GID, FormatAddress(c.Sender), c.Dest))}, nil
	case "Write":
		for _, f := range c.Files {
			f.WriteString("ok")
		}
		c.Close()
		return &Message{}, nil
	case "Hang":
		c.Close()
		fmt.Println("hang")
		<-ctx.Done()
		return nil, ctx.Err()
	case "Fail":
		return nil, &CallError{Name: "com.example.Error.Nope", Text: "nope"}
	}
	c.Close()
	return nil, &CallError{Name: ErrorUnknownMethod, Text: c.Member}
}

// childServe joins $PORTER_BUS, owns $BUS_NAME with echo as handler,
// prints "ready ADDRESS", and serves until its stdin closes.
func childServe() int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := DialOptions(ctx, "", Options{Handler: echo, NoFDs: os.Getenv("BUS_NOFDS") != ""})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	defer e.Close()
	v, err := e.RequestName(ctx, os.Getenv("BUS_NAME"), 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	fmt.Printf("ready %s %d\n", FormatAddress(e.Address()), v)
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// child is a running childServe.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	addr  string
	value int
}

// startChild runs childServe as uid (-1: as the test) owning name.
func startChild(t *testing.T, m *Master, uid, gid int, name string, env ...string) *child {
	t.Helper()
	return startHelper(t, m, "bus-serve", uid, gid, name, env...)
}

// startHelper runs the child helper named helper as uid (-1: as the test)
// on m's bus, owning name, and waits for its "ready ADDR VALUE" line.
func startHelper(t *testing.T, m *Master, helper string, uid, gid int, name string, env ...string) *child {
	t.Helper()
	cmd := testutil.Child(t, helper, uid, gid)
	cmd.Env = append(cmd.Env, "PORTER_BUS="+m.Addr(), "BUS_NAME="+name)
	cmd.Env = append(cmd.Env, env...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	t.Cleanup(func() {
		c.stdin.Close()
		c.cmd.Wait()
	})
	line := c.line(t)
	if _, err := fmt.Sscanf(line, "ready %s %d", &c.addr, &c.value); err != nil {
		t.Fatalf("child said %q: %v", line, err)
	}
	return c
}

// line reads one line the child printed.
func (c *child) line(t *testing.T) string {
	t.Helper()
	s, err := c.out.ReadString('\n')
	if err != nil {
		t.Fatalf("child output: %v", err)
	}
	return strings.TrimSpace(s)
}

// modes runs f for the direct and the routed path.
func modes(t *testing.T, f func(t *testing.T, routed bool)) {
	t.Run("direct", func(t *testing.T) { f(t, false) })
	t.Run("routed", func(t *testing.T) { f(t, true) })
}

func TestEndpointJoin(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CheckLeaks(t)
	m := busMaster(t)
	e := dial(t, m, Options{Label: "join-test"})
	if e.Address() < 2 {
		t.Fatalf("address %d", e.Address())
	}
	if c := e.Cred(); c.PID != os.Getpid() || c.UID != os.Geteuid() || c.GID != os.Getegid() {
		t.Fatalf("verified cred %+v", c)
	}
	uid, gid := testutil.Nobody(t)
	ch := startChild(t, m, uid, gid, "com.example.nobody")
	if ch.value != NamePrimaryOwner {
		t.Fatalf("RequestName as nobody: %d", ch.value)
	}
	id, err := e.Resolve(ctxT(t), "com.example.nobody")
	if err != nil {
		t.Fatal(err)
	}
	if int(id.UID) != uid || int(id.GID) != gid || FormatAddress(id.Address) != ch.addr {
		t.Fatalf("identity %+v, want uid %d gid %d address %s", id, uid, gid, ch.addr)
	}
	ids, err := e.List(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for _, id := range ids {
		seen[id.Address] = true
	}
	if !seen[e.Address()] || !seen[id.Address] || len(ids) != 2 {
		t.Fatalf("LIST %+v", ids)
	}
}

func TestEndpointCall(t *testing.T) {
	testutil.RequireRoot(t)
	modes(t, func(t *testing.T, routed bool) {
		testutil.CheckLeaks(t)
		m := busMaster(t)
		e := dial(t, m, Options{Routed: routed})
		uid, gid := testutil.Nobody(t)
		ch := startChild(t, m, uid, gid, "com.example.echo")
		ctx := ctxT(t)
		// By name: the callee sees our verified identity and the name.
		r, err := e.Call(ctx, "com.example.echo", &Message{Member: "Who"})
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("%d %d %d %s com.example.echo", os.Getpid(), os.Geteuid(), os.Getegid(), FormatAddress(e.Address()))
		if string(r.Body) != want {
			t.Fatalf("Who by name: %q, want %q", r.Body, want)
		}
		// By address.
		r, err = e.Call(ctx, ch.addr, &Message{Member: "Echo", Body: []byte("hello")})
		if err != nil {
			t.Fatal(err)
		}
		if string(r.Body) != "hello" {
			t.Fatalf("Echo: %q", r.Body)
		}
		// An application error.
		_, err = e.Call(ctx, ch.addr, &Message{Member: "Fail"})
		var ce *CallError
		if !errors.As(err, &ce) || ce.Name != "com.example.Error.Nope" || ce.Text != "nope" {
			t.Fatalf("Fail: %v", err)
		}
		// Nobody owns the name.
		_, err = e.Call(ctx, "com.example.none", &Message{Member: "Echo"})
		if CodeOf(err) != CodeNameHasNoOwner {
			t.Fatalf("call to an unowned name: %v", err)
		}
		e.mu.Lock()
		p := e.peers[mustAddr(t, ch.addr)]
		e.mu.Unlock()
		if p == nil || p.routed != routed {
			t.Fatalf("path to the callee: %+v, want routed %v", p, routed)
		}
	})
}

func mustAddr(t testing.TB, s string) uint64 {
	a, err := ParseAddress(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestEndpointFDs(t *testing.T) {
	testutil.RequireRoot(t)
	modes(t, func(t *testing.T, routed bool) {
		testutil.CheckLeaks(t)
		m := busMaster(t)
		e := dial(t, m, Options{Routed: routed})
		uid, gid := testutil.Nobody(t)
		startChild(t, m, uid, gid, "com.example.fds")
		ctx := ctxT(t)
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer pr.Close()
		// The callee writes into the pipe we lent it.
		if _, err := e.Call(ctx, "com.example.fds", &Message{Member: "Write", Files: []*os.File{pw}}); err != nil {
			t.Fatal(err)
		}
		// The callee gives it back; the reply's copy is ours.
		r, err := e.Call(ctx, "com.example.fds", &Message{Member: "Echo", Files: []*os.File{pw}})
		if err != nil {
			t.Fatal(err)
		}
		pw.Close()
		if len(r.Files) != 1 {
			t.Fatalf("reply with %d files", len(r.Files))
		}
		r.Files[0].WriteString("!")
		r.Close()
		b, err := io.ReadAll(pr)
		if err != nil || string(b) != "ok!" {
			t.Fatalf("pipe: %q, %v", b, err)
		}
		// A callee that accepts no fds is refused before anything is sent.
		startChild(t, m, uid, gid, "com.example.nofds", "BUS_NOFDS=1")
		_, err = e.Call(ctx, "com.example.nofds", &Message{Member: "Echo", Files: []*os.File{pr}})
		if CodeOf(err) != CodeFdsRefused || !errors.Is(err, syscall.EOPNOTSUPP) {
			t.Fatalf("fds to a peer that refuses them: %v", err)
		}
	})
}

// TestEndpointRefusesFDs: a receiver that accepts no fds answers a frame
// that carries some anyway with FDS_REFUSED and closes them.
func TestEndpointRefusesFDs(t *testing.T) {
	testutil.CheckLeaks(t)
	m := busMaster(t)
	srv := dial(t, m, Options{NoFDs: true, Handler: echo})
	cli := dial(t, m, Options{})
	ctx := ctxT(t)
	if _, err := cli.Call(ctx, FormatAddress(srv.Address()), &Message{Member: "Echo"}); err != nil {
		t.Fatal(err)
	}
	cli.mu.Lock()
	p := cli.peers[srv.Address()]
	cli.mu.Unlock()
	p.accepts |= PeerAcceptsFDs // lie to our side, as a misbehaving library would
	pr, pw, _ := os.Pipe()
	defer pr.Close()
	_, err := cli.Call(ctx, FormatAddress(srv.Address()), &Message{Member: "Echo", Files: []*os.File{pw}})
	pw.Close()
	if CodeOf(err) != CodeFdsRefused {
		t.Fatalf("fds to a receiver without fds: %v", err)
	}
	// The receiver closed its copy: the pipe's only writer is gone.
	if b, err := io.ReadAll(pr); err != nil || len(b) != 0 {
		t.Fatalf("read %q, %v", b, err)
	}
}

func TestEndpointNameHandOver(t *testing.T) {
	testutil.CheckLeaks(t)
	m := busMaster(t)
	ctx := ctxT(t)
	w := dial(t, m, Options{})
	watch, err := w.Watch(ctx, AddrBus, Rule{Kind: RuleInterface, Value: DBusInterface},
		Rule{Kind: RuleMember, Value: MemberNameOwnerChanged}, Rule{Kind: RuleArg, Index: 0, Value: "com.example.ho"})
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close()
	next := func(wantOld, wantNew uint64) {
		t.Helper()
		select {
		case n := <-watch.C:
			old, new, err := ParseNameOwnerChanged(n.Body)
			if err != nil || n.Sender != AddrBus || old != wantOld || new != wantNew {
				t.Fatalf("NameOwnerChanged %v→%v from %d (%v), want %v→%v", old, new, n.Sender, err, wantOld, wantNew)
			}
		case <-ctx.Done():
			t.Fatal("no NameOwnerChanged")
		}
	}
	// Release: the queued endpoint takes over.
	a := dial(t, m, Options{Handler: echo})
	b := dial(t, m, Options{Handler: echo})
	if v, err := a.RequestName(ctx, "com.example.ho", 0); err != nil || v != NamePrimaryOwner {
		t.Fatal(v, err)
	}
	next(0, a.Address())
	if v, err := b.RequestName(ctx, "com.example.ho", 0); err != nil || v != NameInQueue {
		t.Fatal(v, err)
	}
	if v, err := a.ReleaseName(ctx, "com.example.ho"); err != nil || v != NameReleased {
		t.Fatal(v, err)
	}
	next(a.Address(), b.Address())
	// kill -9 of the owner: the next in line takes over.
	ch := startChild(t, m, -1, -1, "com.example.ho2")
	caddr := mustAddr(t, ch.addr)
	watch2, err := w.Watch(ctx, AddrBus, Rule{Kind: RuleMember, Value: MemberNameOwnerChanged}, Rule{Kind: RuleArg, Index: 0, Value: "com.example.ho2"})
	if err != nil {
		t.Fatal(err)
	}
	defer watch2.Close()
	if v, err := a.RequestName(ctx, "com.example.ho2", 0); err != nil || v != NameInQueue {
		t.Fatal(v, err)
	}
	ch.cmd.Process.Kill()
	select {
	case n := <-watch2.C:
		old, new, _ := ParseNameOwnerChanged(n.Body)
		if old != caddr || new != a.Address() {
			t.Fatalf("after kill -9: %v→%v, want %v→%v", old, new, caddr, a.Address())
		}
	case <-ctx.Done():
		t.Fatal("no NameOwnerChanged after kill -9")
	}
	id, err := w.Resolve(ctx, "com.example.ho2")
	if err != nil || id.Address != a.Address() {
		t.Fatalf("owner after kill -9: %+v, %v", id, err)
	}
}

func TestEndpointPeerKilled(t *testing.T) {
	modes(t, func(t *testing.T, routed bool) {
		testutil.CheckLeaks(t)
		m := busMaster(t)
		e := dial(t, m, Options{Routed: routed})
		ch := startChild(t, m, -1, -1, "com.example.hang")
		errc := make(chan error, 1)
		go func() {
			// No deadline: only the death can end it.
			_, err := e.Call(context.Background(), "com.example.hang", &Message{Member: "Hang"})
			errc <- err
		}()
		if l := ch.line(t); l != "hang" {
			t.Fatalf("child said %q", l)
		}
		ch.cmd.Process.Kill()
		select {
		case err := <-errc:
			if CodeOf(err) != CodePeerGone || !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("call to a killed peer: %v", err)
			}
		case <-ctxT(t).Done():
			t.Fatal("the call outlived its callee")
		}
	})
}

func TestEndpointTimeout(t *testing.T) {
	modes(t, func(t *testing.T, routed bool) {
		testutil.CheckLeaks(t)
		m := busMaster(t)
		srv := dial(t, m, Options{Handler: func(ctx context.Context, c *Call) (*Message, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}})
		cli := dial(t, m, Options{Routed: routed})
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, err := cli.Call(ctx, FormatAddress(srv.Address()), &Message{Member: "Hang"})
		if CodeOf(err) != CodeTimeout || !errors.Is(err, &Error{Code: CodeTimeout}) {
			t.Fatalf("call past its deadline: %v", err)
		}
	})
}

// TestEndpointForgedSource: a frame on a channel whose source is not the
// peer the master introduced makes the receiver close the channel and
// log it; the sender's next call finds it closed and connects again.
func TestEndpointForgedSource(t *testing.T) {
	testutil.CheckLeaks(t)
	m := busMaster(t)
	var mu sync.Mutex
	var logged []string
	srv := dial(t, m, Options{Handler: echo, Logf: func(f string, a ...any) {
		mu.Lock()
		logged = append(logged, fmt.Sprintf(f, a...))
		mu.Unlock()
	}})
	cli := dial(t, m, Options{})
	ctx := ctxT(t)
	dest := FormatAddress(srv.Address())
	if _, err := cli.Call(ctx, dest, &Message{Member: "Echo"}); err != nil {
		t.Fatal(err)
	}
	cli.mu.Lock()
	c := cli.peers[srv.Address()].ch
	cli.mu.Unlock()
	forged := &Frame{Type: TypeCall, Serial: 999, Source: srv.Address() + 100, Destination: srv.Address(),
		Fields: []Field{{FieldMember, []byte("Echo")}}}
	b, err := forged.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.conn.Send(b); err != nil {
		t.Fatal(err)
	}
	// The receiver closes the channel.
	testutil.WaitFor(t, "the receiver closed the channel", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.channels) == 0
	})
	mu.Lock()
	ok := len(logged) > 0 && strings.Contains(logged[0], "BAD_SOURCE")
	mu.Unlock()
	if !ok {
		t.Fatalf("forgery not logged: %q", logged)
	}
	if _, err := cli.Call(ctx, dest, &Message{Member: "Echo"}); err != nil {
		t.Fatalf("call after the channel closed: %v", err)
	}
}

// TestEndpointAcceptorCalls: a CALL from the acceptor's side closes the
// channel at the initiator, when it next reads it: the call waiting then
// fails with PEER_GONE, and the one after connects again.
func TestEndpointAcceptorCalls(t *testing.T) {
	testutil.CheckLeaks(t)
	m := busMaster(t)
	var mu sync.Mutex
	var logged []string
	srv := dial(t, m, Options{Handler: echo})
	cli := dial(t, m, Options{Handler: echo, Logf: func(f string, a ...any) {
		mu.Lock()
		logged = append(logged, fmt.Sprintf(f, a...))
		mu.Unlock()
	}})
	ctx := ctxT(t)
	dest := FormatAddress(srv.Address())
	if _, err := cli.Call(ctx, dest, &Message{Member: "Echo"}); err != nil {
		t.Fatal(err)
	}
	var c *channel
	srv.mu.Lock()
	for _, x := range srv.channels {
		c = x
	}
	srv.mu.Unlock()
	if err := c.send(&Frame{Type: TypeCall, Serial: 1000, Source: c.local, Destination: c.peer, Fields: []Field{{FieldMember, []byte("Echo")}}}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Call(ctx, dest, &Message{Member: "Echo"}); CodeOf(err) != CodePeerGone {
		t.Fatalf("call on a channel the acceptor called on: %v", err)
	}
	mu.Lock()
	ok := len(logged) > 0 && strings.Contains(logged[0], "CALL from the acceptor")
	mu.Unlock()
	if !ok {
		t.Fatalf("violation not logged: %q", logged)
	}
	if _, err := cli.Call(ctx, dest, &Message{Member: "Echo"}); err != nil {
		t.Fatalf("call after the channel closed: %v", err)
	}
}

// TestEndpointNameMoved: a call by name on a channel whose peer no longer
// owns the name is answered NAME_MOVED, resolved again and retried.
func TestEndpointNameMoved(t *testing.T) {
	testutil.CheckLeaks(t)
	m := busMaster(t)
	ctx := ctxT(t)
	who := func(id string) Handler {
		return func(ctx context.Context, c *Call) (*Message, error) {
			return &Message{Body: []byte(id)}, nil
		}
	}
	a := dial(t, m, Options{Handler: who("a")})
	b := dial(t, m, Options{Handler: who("b")})
	cli := dial(t, m, Options{})
	if _, err := a.RequestName(ctx, "com.example.moved", 0); err != nil {
		t.Fatal(err)
	}
	r, err := cli.Call(ctx, "com.example.moved", &Message{Member: "Who"})
	if err != nil || string(r.Body) != "a" {
		t.Fatal(r, err)
	}
	if _, err := a.ReleaseName(ctx, "com.example.moved"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.RequestName(ctx, "com.example.moved", 0); err != nil {
		t.Fatal(err)
	}
	r, err = cli.Call(ctx, "com.example.moved", &Message{Member: "Who"})
	if err != nil || string(r.Body) != "b" {
		t.Fatalf("after the move: %v, %v", r, err)
	}
}

// TestEndpointSignal: a unicast signal reaches the receiver's Watcher
// with the sender's verified identity, on both paths.
func TestEndpointSignal(t *testing.T) {
	modes(t, func(t *testing.T, routed bool) {
		testutil.CheckLeaks(t)
		m := busMaster(t)
		ctx := ctxT(t)
		rcv := dial(t, m, Options{})
		snd := dial(t, m, Options{Routed: routed})
		w, err := rcv.Watch(ctx, 0, Rule{Kind: RuleInterface, Value: "com.example.Sig"})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		err = snd.Send(ctx, FormatAddress(rcv.Address()), &Message{Path: "/a", Interface: "com.example.Sig", Member: "Ping", Body: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case n := <-w.C:
			if n.Sender != snd.Address() || n.Cred.PID != os.Getpid() || string(n.Body) != "x" || n.Member != "Ping" {
				t.Fatalf("notice %+v %+v", n, n.Message)
			}
		case <-ctx.Done():
			t.Fatal("no signal")
		}
	})
}

// TestEndpointMasterGone: when the master stops, calls in flight fail at
// once and later calls fail too.
func TestEndpointMasterGone(t *testing.T) {
	testutil.CheckLeaks(t)
	m := busMaster(t)
	srv := dial(t, m, Options{Handler: func(ctx context.Context, c *Call) (*Message, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}})
	cli := dial(t, m, Options{Routed: true})
	errc := make(chan error, 1)
	go func() {
		_, err := cli.Call(context.Background(), FormatAddress(srv.Address()), &Message{Member: "Hang"})
		errc <- err
	}()
	testutil.WaitFor(t, "the call in flight", func() bool {
		cli.mu.Lock()
		defer cli.mu.Unlock()
		return len(cli.calls) == 1
	})
	m.Close()
	err := <-errc
	if c := CodeOf(err); c != CodeShuttingDown && c != CodePeerGone {
		t.Fatalf("call when the master stopped: %v", err)
	}
	if _, err := cli.Call(ctxT(t), FormatAddress(srv.Address()), &Message{Member: "X"}); err == nil {
		t.Fatal("call after the master stopped worked")
	}
}

func TestEndpointBadInput(t *testing.T) {
	testutil.CheckLeaks(t)
	m := busMaster(t)
	e := dial(t, m, Options{})
	ctx := ctxT(t)
	for _, dest := range []string{"", ":1.0", ":1.1", "nodots", ":bus"} {
		if _, err := e.Call(ctx, dest, &Message{Member: "X"}); CodeOf(err) != CodeInvalid && err == nil {
			t.Errorf("Call(%q) worked", dest)
		}
	}
	if _, err := e.Call(ctx, ":1.5", &Message{Member: "bad member"}); err == nil {
		t.Error("bad member accepted")
	}
	if _, err := e.RequestName(ctx, "x", 0); err == nil {
		t.Error("bad name accepted")
	}
	if _, err := DialOptions(ctx, filepath.Join(t.TempDir(), "none"), Options{}); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("dial to nothing: %v", err)
	}
	_ = strconv.Itoa
}

// TestEndpointConcurrentCalls: many callers on one channel, some whose
// deadline passes while they read the channel for everyone, each get
// their own answer.
func TestEndpointConcurrentCalls(t *testing.T) {
	modes(t, func(t *testing.T, routed bool) {
		testutil.CheckLeaks(t)
		m := busMaster(t)
		srv := dial(t, m, Options{Handler: func(ctx context.Context, c *Call) (*Message, error) {
			if c.Member == "Slow" {
				time.Sleep(time.Millisecond)
			}
			return &Message{Body: c.Body}, nil
		}})
		cli := dial(t, m, Options{Routed: routed})
		dest := FormatAddress(srv.Address())
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 200; i++ {
					body := fmt.Sprintf("%d/%d", g, i)
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					member := "Echo"
					if i%10 == g%10 {
						// A deadline that passes while this caller may be
						// the one reading the channel for the others.
						cancel()
						ctx, cancel = context.WithTimeout(context.Background(), 200*time.Microsecond)
						member = "Slow"
					}
					r, err := cli.Call(ctx, dest, &Message{Member: member, Body: []byte(body)})
					cancel()
					if member == "Slow" && CodeOf(err) == CodeTimeout {
						continue
					}
					if err != nil {
						errs <- err
						return
					}
					if string(r.Body) != body {
						errs <- fmt.Errorf("sent %q, got %q", body, r.Body)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

// TestEndpointRevoked: when the policy no longer lets a pair talk
// (Master.Revalidate), the channel closes on both sides, the call
// pending on it fails (REVOKED, or PEER_GONE when the acceptor's close
// is read before the REVOKE), and the next call is refused.
func TestEndpointRevoked(t *testing.T) {
	testutil.CheckLeaks(t)
	var deny atomic.Bool
	path := filepath.Join(testutil.SharedDir(t), "bus")
	base := DefaultPolicy(os.Geteuid())
	m, err := Listen(path, func(cred fdpass.Cred, r Request) Decision {
		if r.Op == OpTalk && deny.Load() {
			return Decision{Reason: "revoked by the test"}
		}
		return base(cred, r)
	})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- m.Serve() }()
	defer func() { m.Close(); <-served }()
	inHandler := make(chan struct{}, 1)
	srv := dial(t, m, Options{Handler: func(ctx context.Context, c *Call) (*Message, error) {
		inHandler <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	}})
	cli := dial(t, m, Options{})
	errc := make(chan error, 1)
	go func() {
		_, err := cli.Call(context.Background(), FormatAddress(srv.Address()), &Message{Member: "Hang"})
		errc <- err
	}()
	<-inHandler
	deny.Store(true)
	m.Revalidate()
	err = <-errc
	if c := CodeOf(err); c != CodeRevoked && c != CodePeerGone {
		t.Fatalf("call pending on a revoked channel: %v", err)
	}
	_, err = cli.Call(ctxT(t), FormatAddress(srv.Address()), &Message{Member: "Hang"})
	if CodeOf(err) != CodeDenied {
		t.Fatalf("call after the revocation: %v", err)
	}
}

// TestEndpointClose: Close fails the calls in flight, is idempotent, and
// every later call fails with ErrClosed; a peer that takes no channels
// (NoDirect) is reached on the routed path.
func TestEndpointClose(t *testing.T) {
	testutil.CheckLeaks(t)
	m := busMaster(t)
	srv := dial(t, m, Options{NoDirect: true, Handler: func(ctx context.Context, c *Call) (*Message, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}})
	cli := dial(t, m, Options{})
	errc := make(chan error, 1)
	go func() {
		_, err := cli.Call(context.Background(), FormatAddress(srv.Address()), &Message{Member: "Hang"})
		errc <- err
	}()
	testutil.WaitFor(t, "the routed call in flight", func() bool {
		cli.mu.Lock()
		defer cli.mu.Unlock()
		return len(cli.calls) == 1
	})
	cli.mu.Lock()
	p := cli.peers[srv.Address()]
	cli.mu.Unlock()
	if p == nil || !p.routed {
		t.Fatalf("path to a NoDirect peer: %+v", p)
	}
	cli.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("call in flight at Close: %v", err)
	}
	if err := cli.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := cli.Call(ctxT(t), FormatAddress(srv.Address()), &Message{Member: "X"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("call after Close: %v", err)
	}
	if _, err := cli.Watch(ctxT(t), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("Watch after Close: %v", err)
	}
}
