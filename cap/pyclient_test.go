package cap_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/porter-ipc/porter/cap"
	"github.com/porter-ipc/porter/internal/testutil"
)

// The tests here run cap/testdata/capclient.py, a client written in
// Python from docs/protocol-cap.md alone (issue 12: the doc must be
// enough to write a client from it), against an in-process cap.Server.

// pyLog records which object each call reached, in order.
type pyLog struct {
	mu    sync.Mutex
	calls []string
}

func (l *pyLog) add(format string, a ...any) {
	l.mu.Lock()
	l.calls = append(l.calls, fmt.Sprintf(format, a...))
	l.mu.Unlock()
}

func (l *pyLog) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.calls...)
}

// pyCounter is an object the Python client gets as a Ref in a result.
type pyCounter struct {
	name string
	log  *pyLog
	mu   sync.Mutex
	n    int64
}

func (c *pyCounter) Inc(ctx context.Context, n int64) (int64, error) {
	c.log.add("%s.Inc(%d)", c.name, n)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n += n
	return c.n, nil
}

// pyRoot is the object the Python client inherits as PORTER_CAP_ROOT.
type pyRoot struct {
	t   testing.TB
	srv *cap.Server
	log *pyLog

	blocked chan struct{} // Block sends on it once it waits

	mu      sync.Mutex
	counter *cap.Ref // the counter handed out, kept by the root
	cookie  uint64   // its cookie, to recognise it when it comes back
}

func (p *pyRoot) Echo(ctx context.Context, v any) (any, error) {
	p.log.add("root.Echo")
	return v, nil
}

type pyAddArgs struct {
	A int64 `cap:"a"`
	B int64 `cap:"b"`
}

func (p *pyRoot) Add(ctx context.Context, a pyAddArgs) (int64, error) {
	p.log.add("root.Add(%d,%d)", a.A, a.B)
	return a.A + a.B, nil
}

func (p *pyRoot) Counter(ctx context.Context, name string) (*cap.Ref, error) {
	p.log.add("root.Counter(%s)", name)
	r, err := p.srv.Export(&pyCounter{name: name, log: p.log})
	if err != nil {
		return nil, err
	}
	ck, err := r.Cookie(ctx)
	if err != nil {
		r.Close()
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.counter != nil {
		r.Close()
		return nil, errors.New("one counter only")
	}
	p.counter, p.cookie = r, ck
	return r, nil // a method keeps the Refs it returns
}

func (p *pyRoot) Same(ctx context.Context, _ any) (*cap.Ref, error) {
	p.log.add("root.Same")
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.counter == nil {
		return nil, errors.New("no counter yet")
	}
	return p.counter, nil
}

// Give takes a Ref back from the client: it must be the counter handed
// out (same cookie), and calling it must reach that counter.
func (p *pyRoot) Give(ctx context.Context, r *cap.Ref) (int64, error) {
	p.log.add("root.Give")
	if r == nil {
		return 0, errors.New("no ref")
	}
	defer r.Close() // received: ours to close
	ck, err := r.Cookie(ctx)
	if err != nil {
		return 0, err
	}
	p.mu.Lock()
	want := p.cookie
	p.mu.Unlock()
	if ck != want {
		return 0, fmt.Errorf("Give: got cookie %d, want the counter's %d", ck, want)
	}
	var n int64
	err = r.Call(ctx, "Inc", int64(0), &n)
	return n, err
}

func (p *pyRoot) Ping(ctx context.Context, _ struct{}) (struct{}, error) {
	p.log.add("root.Ping")
	return struct{}{}, nil
}

// pyPerson has no cap tags: its record keys are the Go field names.
type pyPerson struct {
	Name string
	Age  int
}

func (p *pyRoot) Person(ctx context.Context, a pyPerson) (pyPerson, error) {
	p.log.add("root.Person(%s,%d)", a.Name, a.Age)
	a.Age++
	return a, nil
}

// RevokeCounter revokes the counter for every holder.
func (p *pyRoot) RevokeCounter(ctx context.Context, _ any) (bool, error) {
	p.log.add("root.RevokeCounter")
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.counter == nil {
		return false, errors.New("no counter yet")
	}
	return true, p.srv.Revoke(p.counter)
}

// Note returns a pipe's read end holding text: a file in a result.
func (p *pyRoot) Note(ctx context.Context, text string) (*os.File, error) {
	p.log.add("root.Note(%s)", text)
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer w.Close()
	if _, err := w.WriteString(text); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil // a method gives the files it returns
}

// Write writes text to a file the client passes: a file in an argument.
func (p *pyRoot) Write(ctx context.Context, a struct {
	F    *os.File `cap:"f"`
	Text string   `cap:"text"`
}) (int, error) {
	p.log.add("root.Write(%s)", a.Text)
	if a.F == nil {
		return 0, errors.New("no file")
	}
	defer a.F.Close() // received: ours to close
	return a.F.WriteString(a.Text)
}

// Block waits until its call is canceled (the session or server ends).
func (p *pyRoot) Block(ctx context.Context, _ struct{}) (struct{}, error) {
	p.log.add("root.Block")
	p.blocked <- struct{}{}
	<-ctx.Done()
	return struct{}{}, ctx.Err()
}

func (p *pyRoot) Fail(ctx context.Context, msg string) (struct{}, error) {
	p.log.add("root.Fail(%s)", msg)
	return struct{}{}, errors.New(msg)
}

func (p *pyRoot) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.counter != nil {
		p.counter.Close()
		p.counter = nil
	}
}

// runPyClient starts capclient.py with args, root inherited as
// PORTER_CAP_ROOT, runs during (when not nil) while it runs, and returns
// its JSON lines once it has exited.
func runPyClient(t *testing.T, root *cap.Ref, during func(), args ...string) []map[string]any {
	t.Helper()
	py := testutil.RequireProgram(t, "python3")
	cmd := exec.CommandContext(ctxT(t), py, append([]string{"testdata/capclient.py"}, args...)...)
	if err := cap.ToChild(cmd, "ROOT", root); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if during != nil {
		during()
	}
	err := cmd.Wait()
	out := stdout.String()
	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var m map[string]any
		if jerr := json.Unmarshal(sc.Bytes(), &m); jerr != nil {
			t.Fatalf("capclient.py wrote %q: %v", sc.Text(), jerr)
		}
		lines = append(lines, m)
	}
	if err != nil {
		t.Fatalf("capclient.py: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
	}
	if stderr.Len() > 0 {
		t.Errorf("capclient.py stderr:\n%s", stderr.String())
	}
	return lines
}

// TestPythonClient runs the whole scenario: inherit a door, open a
// session, call with ints, strings, records and lists, receive a Ref and
// call it, pass it back, and see ERROR codes; every call reaches the
// object it should, and no fd leaks on either side.
func TestPythonClient(t *testing.T) {
	testutil.CheckLeaks(t)
	srv := newServer(t)
	log := &pyLog{}
	obj := &pyRoot{t: t, srv: srv, log: log}
	t.Cleanup(obj.close)
	root := export(t, srv, obj)
	rootCookie, err := root.Cookie(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}

	lines := runPyClient(t, root, nil, "scenario")
	next, want := pySteps(t, &lines)

	m := next("inherit")
	want(m, "env_unset", true)
	want(m, "cloexec", true)
	want(m, "cookie", nil)
	m = next("opened")
	want(m, "cookie", fmt.Sprint(rootCookie))

	const nEcho = 20
	for i := 0; i < nEcho; i++ {
		m = next("echo")
		if m["same"] != true {
			t.Errorf("echo: sent %#v, got back %#v", m["sent"], m["got"])
		}
	}
	want(next("add"), "got", 42.0)
	want(next("counter"), "is_ref", true)
	want(next("inc"), "got", 5.0)
	want(next("inc"), "got", 7.0)
	m = next("same")
	want(m, "is_ref", true)
	want(m, "dedup", true) // one fd for the counter, however often received
	want(m, "refs", 2.0)
	want(next("give"), "got", 7.0)
	want(next("inc"), "got", 8.0)
	want(next("ping"), "got", map[string]any{})
	m = next("emptybody")
	want(m, "code", 2.0)
	want(m, "error", "BAD_ARGS")
	want(next("person"), "got", map[string]any{"Name": "Ada", "Age": 37.0})
	want(next("note"), "got", "from Go")
	want(next("write"), "got", "from Python")
	m = next("unknown")
	want(m, "code", 1.0)
	want(m, "error", "UNKNOWN_METHOD")
	m = next("badargs")
	want(m, "code", 2.0)
	want(m, "error", "BAD_ARGS")
	m = next("fail")
	want(m, "code", 3.0)
	want(m, "error", "APPLICATION")
	if text, _ := m["text"].(string); !strings.Contains(text, "boom") {
		t.Errorf("fail: text %q does not carry the method's error", text)
	}
	want(next("revoke"), "got", true)
	m = next("revoked")
	want(m, "code", 4.0)
	want(m, "error", "REVOKED")
	m = next("gone")
	want(m, "code", 0.0)
	want(m, "error", "GONE")
	want(next("done"), "leaked", []any{})
	if len(lines) > 0 {
		t.Errorf("capclient.py wrote more than expected: %v", lines)
	}

	wantCalls := []string{}
	for i := 0; i < nEcho; i++ {
		wantCalls = append(wantCalls, "root.Echo")
	}
	wantCalls = append(wantCalls,
		"root.Add(2,40)",
		"root.Counter(c1)",
		"c1.Inc(5)", "c1.Inc(2)",
		"root.Same",
		"root.Give", "c1.Inc(0)",
		"c1.Inc(1)",
		"root.Ping",
		"root.Person(Ada,36)",
		"root.Note(from Go)",
		"root.Write(from Python)",
		"root.Fail(boom)",
		"root.RevokeCounter",
	)
	if got := log.get(); !reflect.DeepEqual(got, wantCalls) {
		t.Errorf("calls reached:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(wantCalls, "\n  "))
	}
}

// pySteps returns next, which takes the client's next line and checks it
// is step, and want, which checks a key of a line.
func pySteps(t *testing.T, lines *[]map[string]any) (next func(step string) map[string]any, want func(m map[string]any, key string, v any)) {
	next = func(step string) map[string]any {
		t.Helper()
		if len(*lines) == 0 {
			t.Fatalf("capclient.py ended before step %q", step)
		}
		m := (*lines)[0]
		*lines = (*lines)[1:]
		if m["step"] != step {
			t.Fatalf("capclient.py step %v, want %q: %v", m["step"], step, m)
		}
		return m
	}
	want = func(m map[string]any, key string, v any) {
		t.Helper()
		if !reflect.DeepEqual(m[key], v) {
			t.Errorf("step %v: %s = %#v, want %#v (line %v)", m["step"], key, m[key], v, m)
		}
	}
	return next, want
}

// TestPythonClientServerGone: the server ends while the Python client
// waits for an answer; the call fails with SERVER_GONE at once (no
// REVOKED came), and the next call finds the door refusing: GONE.
func TestPythonClientServerGone(t *testing.T) {
	testutil.CheckLeaks(t)
	srv := newServer(t)
	log := &pyLog{}
	obj := &pyRoot{t: t, srv: srv, log: log, blocked: make(chan struct{}, 1)}
	root := export(t, srv, obj)
	ctx := ctxT(t)

	lines := runPyClient(t, root, func() {
		select {
		case <-obj.blocked:
		case <-ctx.Done():
			t.Fatal("the Python client's Block call never arrived")
		}
		srv.Close()
	}, "gone")
	next, want := pySteps(t, &lines)
	next("opened")
	m := next("pending")
	want(m, "error", "SERVER_GONE")
	m = next("gone")
	want(m, "error", "GONE")
	want(next("done"), "leaked", []any{})
	if len(lines) > 0 {
		t.Errorf("capclient.py wrote more than expected: %v", lines)
	}
	if got, wantCalls := log.get(), []string{"root.Block"}; !reflect.DeepEqual(got, wantCalls) {
		t.Errorf("calls reached %q, want %q", got, wantCalls)
	}
}
