package bus

import (
	"bufio"
	"context"
	"crypto/rand"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/porter-ipc/porter/internal/testutil"
)

// The client in testdata/busclient.py is written from
// docs/protocol-bus.md alone, in Python with the standard library: these
// tests run it against a master and Go endpoints in this process, both
// ways, to show that the page is enough to join, own a name, call,
// answer (on a direct channel and routed) and watch notices.

// pyMaster serves a bus in a fresh directory until the test ends.
func pyMaster(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "bus")
	m, err := Listen(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- m.Serve() }()
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		<-served
	})
	return path
}

// pyClient is a running busclient.py whose stdout lines arrive on lines.
type pyClient struct {
	cmd   *exec.Cmd
	lines chan string
	done  chan error
	err   lockedBuffer // stderr, written by exec's copying goroutine
	stdin io.WriteCloser
}

// lockedBuffer is a strings.Builder a test may read while a child writes it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startPy(t *testing.T, path string, args ...string) *pyClient {
	t.Helper()
	py := testutil.RequireProgram(t, "python3")
	p := &pyClient{lines: make(chan string, 64), done: make(chan error, 1)}
	p.cmd = exec.Command(py, append([]string{filepath.Join("testdata", "busclient.py"), "--bus", path}, args...)...)
	p.cmd.Stderr = &p.err
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.done <- p.cmd.Wait()
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		for range p.lines {
		}
		<-p.done
	})
	return p
}

// line returns the client's next line, failing the test if it exits first.
func (p *pyClient) line(t *testing.T) string {
	t.Helper()
	l, ok := <-p.lines
	if !ok {
		err := <-p.done
		p.done <- err
		t.Fatalf("busclient.py %s ended (%v) without the expected line; stderr:\n%s", p.cmd.Args[3:], err, p.err.String())
	}
	return l
}

// exit waits for the client to exit and fails on a nonzero status.
func (p *pyClient) exit(t *testing.T) {
	t.Helper()
	for l := range p.lines {
		t.Errorf("busclient.py: unexpected line %q", l)
	}
	err := <-p.done
	p.done <- err
	if err != nil {
		t.Fatalf("busclient.py %s: %v; stderr:\n%s", p.cmd.Args[3:], err, p.err.String())
	}
}

func pyCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestPythonClientBloom: the client's SipHash and bloom agree with the
// page's test vectors (the rest depends on it).
func TestPythonClientBloom(t *testing.T) {
	p := startPy(t, "", "bloomcheck")
	if l := p.line(t); l != "bloom ok" {
		t.Fatal(l)
	}
	p.exit(t)
}

// TestPythonClientServes: the Python client owns a name and answers a Go
// endpoint's calls on a direct channel and on the routed path, with the
// Go caller's verified pid and uid; the Go side gets the body back.
func TestPythonClientServes(t *testing.T) {
	testutil.CheckLeaks(t)
	path := pyMaster(t)
	ctx := pyCtx(t)
	p := startPy(t, path, "serve", "com.example.py", "2")
	f := strings.Fields(p.line(t))
	if len(f) != 3 || f[0] != "owner" || f[1] != "com.example.py" {
		t.Fatalf("busclient.py serve: %q", f)
	}
	for _, routed := range []bool{false, true} {
		e, err := DialOptions(ctx, path, Options{Label: "go", Routed: routed})
		if err != nil {
			t.Fatal(err)
		}
		args := []string{"hello", "", "wörld"}
		sig, body := Strings(args...)
		r, err := e.Call(ctx, "com.example.py", &Message{Member: "Echo", Signature: sig, Body: body})
		if err != nil {
			t.Fatalf("routed %v: Call: %v; stderr:\n%s", routed, err, p.err.String())
		}
		got, err := ParseStrings(r.Signature, r.Body)
		if err != nil || !reflect.DeepEqual(got, args) {
			t.Errorf("routed %v: reply %q %q: %v", routed, r.Signature, got, err)
		}
		via := "direct"
		if routed {
			via = "routed"
		}
		want := strings.Join([]string{"served", via, "Echo", addrText(e.Address()), strconv.Itoa(os.Getpid()), strconv.Itoa(os.Geteuid())}, " ")
		if l := p.line(t); l != want {
			t.Errorf("busclient.py said %q, want %q", l, want)
		}
		if err := e.Close(); err != nil {
			t.Error(err)
		}
	}
	p.exit(t)
}

// TestPythonClientCalls: the Python client calls a Go endpoint's method by
// name, direct and routed, and prints the reply; the Go handler sees the
// Python process's verified credentials.
func TestPythonClientCalls(t *testing.T) {
	testutil.CheckLeaks(t)
	path := pyMaster(t)
	ctx := pyCtx(t)
	calls := make(chan *Call, 4)
	e, err := DialOptions(ctx, path, Options{Label: "go", Handler: func(ctx context.Context, c *Call) (*Message, error) {
		calls <- c
		if c.Member == "Fail" {
			return nil, &CallError{Name: "com.example.Error.Nope", Text: "not today"}
		}
		args, err := ParseStrings(c.Signature, c.Body)
		if err != nil {
			return nil, err
		}
		sig, body := Strings(append([]string{"got"}, args...)...)
		return &Message{Signature: sig, Body: body}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if v, err := e.RequestName(ctx, "com.example.go", NameDoNotQueue); err != nil || v != NamePrimaryOwner {
		t.Fatalf("RequestName: %d %v", v, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"call", "com.example.go", "Hello", "a", "b c"}, "reply direct got a b c"},
		{[]string{"call", "--routed", "com.example.go", "Hello", "x"}, "reply routed got x"},
		{[]string{"call", addrText(e.Address()), "Hello"}, "reply direct got"},
		{[]string{"call", "com.example.go", "Fail"}, "error com.example.Error.Nope not today"},
		{[]string{"call", "com.example.none", "Hello"}, "fail NAME_HAS_NO_OWNER"},
	} {
		p := startPy(t, path, tc.args...)
		if l := p.line(t); !strings.HasPrefix(l, tc.want) {
			t.Errorf("busclient.py %q: %q, want %q", tc.args, l, tc.want)
		}
		p.exit(t)
		if tc.want[0] == 'f' {
			continue
		}
		c := <-calls
		if c.Cred.PID != p.cmd.Process.Pid || c.Cred.UID != os.Geteuid() {
			t.Errorf("handler saw %+v, want pid %d uid %d", c.Cred, p.cmd.Process.Pid, os.Geteuid())
		}
	}
}

// TestPythonClientWatches: the Python client subscribes to
// NameOwnerChanged for one name (its bloom computed in Python) and sees a
// Go endpoint take it and give it back.
func TestPythonClientWatches(t *testing.T) {
	testutil.CheckLeaks(t)
	path := pyMaster(t)
	ctx := pyCtx(t)
	p := startPy(t, path, "watch", "com.example.w", "2")
	if l := p.line(t); l != "watching com.example.w" {
		t.Fatal(l)
	}
	e, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := e.RequestName(ctx, "com.example.other", 0); err != nil { // not watched: no line
		t.Fatal(err)
	}
	if _, err := e.RequestName(ctx, "com.example.w", 0); err != nil {
		t.Fatal(err)
	}
	me := addrText(e.Address())
	if l := p.line(t); l != "changed com.example.w - "+me {
		t.Errorf("acquired: %q", l)
	}
	if _, err := e.ReleaseName(ctx, "com.example.w"); err != nil {
		t.Fatal(err)
	}
	if l := p.line(t); l != "changed com.example.w "+me+" -" {
		t.Errorf("released: %q", l)
	}
	p.exit(t)
}

// TestPythonClientJoins: join and BYE.
func TestPythonClientJoins(t *testing.T) {
	path := pyMaster(t)
	p := startPy(t, path, "join")
	if l := p.line(t); !strings.HasPrefix(l, "address :1.") {
		t.Fatal(l)
	}
	p.exit(t)
}

func addrText(a uint64) string { return ":1." + strconv.FormatUint(a, 10) }

// pySum is the client's checksum: the sum of the bytes mod 2^32, in decimal.
func pySum(b []byte) string {
	var s uint32
	for _, c := range b {
		s += uint32(c)
	}
	return strconv.FormatUint(uint64(s), 10)
}

// TestPythonClientPublishes: a multicast signal the Python client
// publishes, with the bloom it computed (the master recomputes and would
// refuse a wrong one), reaches a Go Watcher with the Python endpoint as
// Sender, its verified pid, its fields and its arguments; a Watcher whose
// arg0 differs does not get it. The second signal has a path of 18
// elements (the bloom takes the first 16 prefixes) and 17 arguments (ARGS
// takes the first 16).
func TestPythonClientPublishes(t *testing.T) {
	testutil.CheckLeaks(t)
	path := pyMaster(t)
	ctx := pyCtx(t)
	e, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	w, err := e.Watch(ctx, 0, Rule{Kind: RuleInterface, Value: "com.example.Py"}, Rule{Kind: RuleMember, Value: "Ping"})
	if err != nil {
		t.Fatal(err)
	}
	other, err := e.Watch(ctx, 0, Rule{Kind: RuleInterface, Value: "com.example.Py"}, Rule{Kind: RuleArg, Value: "nope"})
	if err != nil {
		t.Fatal(err)
	}
	many := make([]string, 17)
	for i := range many {
		many[i] = "a" + strconv.Itoa(i)
	}
	for _, tc := range []struct {
		path string
		args []string
	}{
		{"/com/example/obj", []string{"hello", "wörld", ""}},
		{"/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r", many},
		{"/", nil},
	} {
		p := startPy(t, path, append([]string{"publish", tc.path, "com.example.Py", "Ping"}, tc.args...)...)
		l := p.line(t)
		p.exit(t)
		f := strings.Fields(l)
		if len(f) != 2 || f[0] != "published" {
			t.Fatalf("busclient.py publish %s: %q", tc.path, l)
		}
		n := next(t, w)
		if addrText(n.Sender) != f[1] || n.Cred.PID != p.cmd.Process.Pid || n.Cred.UID != os.Geteuid() {
			t.Errorf("%s: sender %s %+v, want %s pid %d", tc.path, addrText(n.Sender), n.Cred, f[1], p.cmd.Process.Pid)
		}
		if n.Path != tc.path || n.Interface != "com.example.Py" || n.Member != "Ping" {
			t.Errorf("signal %s %s.%s", n.Path, n.Interface, n.Member)
		}
		got, err := ParseStrings(n.Signature, n.Body)
		if err != nil || len(got) != len(tc.args) || (len(got) > 0 && !reflect.DeepEqual(got, tc.args)) {
			t.Errorf("%s: args %q %q: %v", tc.path, n.Signature, got, err)
		}
		if want := min(len(tc.args), MaxArgs); len(n.Args) != want {
			t.Errorf("%s: %d ARGS entries, want %d", tc.path, len(n.Args), want)
		}
		for i, a := range n.Args {
			if a.Index != uint8(i) || a.Kind != ArgString || a.Value != tc.args[i] {
				t.Errorf("%s: ARGS entry %d: %+v", tc.path, i, a)
			}
		}
		n.Close()
	}
	select {
	case n := <-other.C:
		t.Errorf("a signal the match does not select: %+v", n.Message)
	default:
	}
}

// TestPythonClientListens: the Python client subscribes to one member with
// an arg0 rule (its bloom computed in Python) and prints the signals a Go
// endpoint publishes that match; the ones that do not (another arg0,
// another member, another interface, published before) are not delivered,
// and the client would fail on one that was.
func TestPythonClientListens(t *testing.T) {
	testutil.CheckLeaks(t)
	path := pyMaster(t)
	ctx := pyCtx(t)
	p := startPy(t, path, "listen", "com.example.Go", "Tick", "yes", "2")
	if l := p.line(t); l != "listening" {
		t.Fatal(l)
	}
	e, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	pub := func(obj, iface, member string, args ...string) {
		t.Helper()
		sig, body := Strings(args...)
		var as []Arg
		for i, a := range args {
			as = append(as, Arg{Index: uint8(i), Kind: ArgString, Value: a})
		}
		if err := e.Publish(ctx, &Message{Path: obj, Interface: iface, Member: member, Signature: sig, Body: body, Args: as}); err != nil {
			t.Fatal(err)
		}
	}
	pub("/t", "com.example.Go", "Tick", "no", "0")
	pub("/t", "com.example.Go", "Tock", "yes", "0")
	pub("/t", "com.example.Other", "Tick", "yes", "0")
	pub("/t/one", "com.example.Go", "Tick", "yes", "1")
	pub("/", "com.example.Go", "Tick", "yes", "2", "wörld")
	me := addrText(e.Address())
	for _, want := range []string{
		"signal " + me + " /t/one com.example.Go.Tick yes 1",
		"signal " + me + " / com.example.Go.Tick yes 2 wörld",
	} {
		if l := p.line(t); l != want {
			t.Errorf("busclient.py said %q, want %q", l, want)
		}
	}
	p.exit(t)
}

// TestPythonClientMemfd: 1 MiB bodies as sealed memfds both ways, direct
// and routed. A Go endpoint calls the Python client's serve, which checks
// the seals and size, maps the memfd read-only and answers its checksum;
// the Python client calls a Go handler that echoes the body (a memfd
// again) and checks the echo; a 4 KiB memfd (below memfd_threshold) is
// taken too. A memfd without F_SEAL_WRITE is refused:
// by the receiver on a channel (ERROR BadMemfd, Go and Python alike), by
// the master on the routed path (FAIL BAD_MEMFD).
func TestPythonClientMemfd(t *testing.T) {
	testutil.CheckLeaks(t)
	t.Cleanup(func() { // before the leak check: the memfds the pool keeps ready
		payloadPool.fillers.Wait()
		payloadPool.drain()
	})
	path := pyMaster(t)
	ctx := pyCtx(t)
	const size = 1 << 20
	body := make([]byte, size)
	if _, err := rand.Read(body); err != nil {
		t.Fatal(err)
	}

	// Go → Python.
	p := startPy(t, path, "serve", "com.example.pymem", "4")
	if f := strings.Fields(p.line(t)); len(f) != 3 || f[0] != "owner" {
		t.Fatalf("busclient.py serve: %q", f)
	}
	for _, routed := range []bool{false, true} {
		e, err := DialOptions(ctx, path, Options{Label: "go", Routed: routed})
		if err != nil {
			t.Fatal(err)
		}
		r, err := e.Call(ctx, "com.example.pymem", &Message{Member: "Sum", Body: body})
		if err != nil {
			t.Fatalf("routed %v: Call: %v; stderr:\n%s", routed, err, p.err.String())
		}
		got, err := ParseStrings(r.Signature, r.Body)
		if err != nil || len(got) != 1 || got[0] != pySum(body) {
			t.Errorf("routed %v: reply %q %q (%v), want the checksum %s", routed, r.Signature, got, err, pySum(body))
		}
		r.Close()
		via := map[bool]string{false: "direct", true: "routed"}[routed]
		want := strings.Join([]string{"served", via, "Sum", addrText(e.Address()), strconv.Itoa(os.Getpid()),
			strconv.Itoa(os.Geteuid()), "memfd", strconv.Itoa(size), pySum(body)}, " ")
		if l := p.line(t); l != want {
			t.Errorf("busclient.py said %q, want %q", l, want)
		}
		if err := e.Close(); err != nil {
			t.Error(err)
		}
	}

	// Go (a handler echoing the body) ← Python.
	sums := make(chan string, 4)
	e, err := DialOptions(ctx, path, Options{Label: "go", Handler: func(ctx context.Context, c *Call) (*Message, error) {
		sums <- strconv.Itoa(len(c.Body)) + " " + pySum(c.Body)
		return &Message{Body: append([]byte(nil), c.Body...)}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if v, err := e.RequestName(ctx, "com.example.gomem", NameDoNotQueue); err != nil || v != NamePrimaryOwner {
		t.Fatalf("RequestName: %d %v", v, err)
	}
	for _, tc := range []struct {
		via  string
		size int
		back string // how the echo comes back: above the inline maximum as a memfd
	}{
		{"direct", size, "memfd"},
		{"routed", size, "memfd"},
		{"direct", 4096, "bytes"}, // a memfd below memfd_threshold is taken too
	} {
		via := tc.via
		args := []string{"call", "--memfd", strconv.Itoa(tc.size), "com.example.gomem", "Echo"}
		if via == "routed" {
			args = append([]string{"call", "--routed"}, args[1:]...)
		}
		c := startPy(t, path, args...)
		sent := strings.Fields(c.line(t))
		if len(sent) != 4 || sent[0] != "sent" || sent[2] != strconv.Itoa(tc.size) {
			t.Fatalf("busclient.py %q: %q", args, sent)
		}
		if l, want := c.line(t), "reply "+via+" "+tc.back+" "+sent[2]+" "+sent[3]; l != want {
			t.Errorf("busclient.py %q: %q, want %q", args, l, want)
		}
		c.exit(t)
		if got := <-sums; got != sent[2]+" "+sent[3] {
			t.Errorf("%s: the Go handler got %q, the client sent %q", via, got, sent[2:])
		}
	}

	// A memfd that lacks F_SEAL_WRITE.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"call", "--unsealed", "--memfd", "4096", "com.example.gomem", "Echo"}, "error porter.Bus.Error.BadMemfd"},
		{[]string{"call", "--unsealed", "--memfd", "4096", "com.example.pymem", "Sum"}, "error porter.Bus.Error.BadMemfd"},
		{[]string{"call", "--routed", "--unsealed", "--memfd", "4096", "com.example.gomem", "Echo"}, "fail BAD_MEMFD"},
		{[]string{"call", "--routed", "--unsealed", "--memfd", "4096", "com.example.pymem", "Sum"}, "fail BAD_MEMFD"},
	} {
		c := startPy(t, path, tc.args...)
		if l := c.line(t); !strings.HasPrefix(l, "sent memfd 4096 ") {
			t.Fatalf("busclient.py %q: %q", tc.args, l)
		}
		if l := c.line(t); !strings.HasPrefix(l, tc.want) {
			t.Errorf("busclient.py %q: %q, want %q", tc.args, l, tc.want)
		}
		c.exit(t)
	}
	if l := p.line(t); !strings.HasPrefix(l, "refused direct Sum ") || !strings.Contains(l, " BadMemfd seals ") {
		t.Errorf("busclient.py serve said %q for an unsealed memfd", l)
	}
	select {
	case got := <-sums:
		t.Errorf("the Go handler ran on a refused memfd: %s", got)
	default:
	}
}

// TestPythonClientLost: a Python listener that does not read while a Go
// endpoint publishes 3,000 matching signals misses those that fit neither
// its socket buffer nor its share of the master's queue; when it reads
// again it gets a Lost notice, and the signals it received plus the
// number Lost says it missed are exactly what was published.
func TestPythonClientLost(t *testing.T) {
	testutil.CheckLeaks(t)
	path := pyMaster(t)
	ctx := pyCtx(t)
	p := startPy(t, path, "listen", "--hold", "com.example.Go", "Flood")
	if l := p.line(t); l != "listening" {
		t.Fatal(l)
	}
	e, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	const n = 3000
	for i := range n {
		sig, body := Strings(strconv.Itoa(i))
		if err := e.Publish(ctx, &Message{Path: "/f", Interface: "com.example.Go", Member: "Flood", Signature: sig, Body: body}); err != nil {
			t.Fatal(err)
		}
	}
	// The master handles one connection's frames in order: once it answered
	// this, every signal above was queued for the listener or counted lost.
	if _, err := e.Resolve(ctx, addrText(e.Address())); err != nil {
		t.Fatal(err)
	}
	if _, err := p.stdin.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	me := addrText(e.Address())
	got, lost, next := 0, uint64(0), 0
	for lost == 0 {
		l := p.line(t)
		if f := strings.Fields(l); len(f) == 3 && f[0] == "lost" {
			since, err1 := strconv.ParseUint(f[1], 10, 64)
			total, err2 := strconv.ParseUint(f[2], 10, 64)
			if err1 != nil || err2 != nil || since != total || total == 0 {
				t.Fatalf("first Lost notice: %q", l)
			}
			lost = total
			continue
		}
		f := strings.Fields(l)
		i, err := strconv.Atoi(f[len(f)-1])
		if len(f) != 5 || f[0] != "signal" || f[1] != me || f[3] != "com.example.Go.Flood" || err != nil || i < next {
			t.Fatalf("busclient.py said %q after %d signals", l, got)
		}
		next = i + 1
		got++
	}
	// The listener's queue has room again (that is when Lost is sent), so
	// a last signal is delivered, after the ones still queued.
	sig, body := Strings("end")
	if err := e.Publish(ctx, &Message{Path: "/f", Interface: "com.example.Go", Member: "Flood", Signature: sig, Body: body}); err != nil {
		t.Fatal(err)
	}
	for {
		l := p.line(t)
		f := strings.Fields(l)
		if len(f) != 5 || f[0] != "signal" {
			t.Fatalf("busclient.py said %q after %d signals and Lost %d", l, got, lost)
		}
		if f[4] == "end" {
			break
		}
		if i, err := strconv.Atoi(f[4]); err != nil || i < next {
			t.Fatalf("busclient.py said %q after signal %d", l, next-1)
		} else {
			next = i + 1
		}
		got++
	}
	if uint64(got)+lost != n {
		t.Errorf("received %d and lost %d of %d", got, lost, n)
	}
	t.Logf("received %d, lost %d of %d", got, lost, n)
	p.stdin.Close()
	p.exit(t)
}

// TestPythonClientMonitor: the Python client becomes a monitor while a Go
// endpoint holds a channel to the Python client's serve; the master
// revokes the channel (serve ENDs, closes and DISCONNECTs on REVOKE
// MONITOR) and answers BECOME_MONITOR with the drained and unconfirmed
// counts. The pair's next call, now routed, reaches the monitor once: the
// CALL with its 1 MiB memfd shown by size (no fd reaches a monitor), and
// the REPLY answering it.
func TestPythonClientMonitor(t *testing.T) {
	testutil.CheckLeaks(t)
	t.Cleanup(func() {
		payloadPool.fillers.Wait()
		payloadPool.drain()
	})
	path := pyMaster(t)
	ctx := pyCtx(t)
	s := startPy(t, path, "serve", "com.example.mon", "2")
	f := strings.Fields(s.line(t))
	if len(f) != 3 || f[0] != "owner" {
		t.Fatalf("busclient.py serve: %q", f)
	}
	sa := f[2]
	b, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ba := addrText(b.Address())
	call := func(body []byte) {
		t.Helper()
		r, err := b.Call(ctx, "com.example.mon", &Message{Member: "Sum", Body: body})
		if err != nil {
			t.Fatalf("Call: %v; stderr:\n%s", err, s.err.String())
		}
		if got, err := ParseStrings(r.Signature, r.Body); err != nil || len(got) != 1 || got[0] != pySum(body) {
			t.Errorf("reply %q: %v", got, err)
		}
		r.Close()
	}
	sig, hi := Strings("hi") // a channel for the monitor to drain
	if _, err := b.Call(ctx, "com.example.mon", &Message{Member: "Echo", Signature: sig, Body: hi}); err != nil {
		t.Fatal(err)
	}
	if l := s.line(t); !strings.HasPrefix(l, "served direct Echo "+ba+" ") {
		t.Fatalf("busclient.py serve: %q", l)
	}

	p := startPy(t, path, "monitor")
	// The one channel drained, both sides confirming: the Go initiator
	// reads its idle channel until the Python acceptor's END.
	if l := p.line(t); l != "monitoring 1 0" {
		t.Fatalf("busclient.py monitor: %q", l)
	}
	if l := s.line(t); !strings.HasPrefix(l, "revoked ") || !strings.HasSuffix(l, " 2") {
		t.Fatalf("busclient.py serve: %q, want the REVOKE MONITOR", l)
	}
	body := make([]byte, 1<<20)
	if _, err := rand.Read(body); err != nil {
		t.Fatal(err)
	}
	call(body)
	want := strings.Join([]string{"served routed Sum", ba, strconv.Itoa(os.Getpid()), strconv.Itoa(os.Geteuid()), "memfd 1048576", pySum(body)}, " ")
	if l := s.line(t); l != want {
		t.Errorf("busclient.py serve: %q, want %q", l, want)
	}
	s.exit(t)
	var callSerial string
	for {
		l := p.line(t)
		f := strings.Fields(l)
		if len(f) < 6 || f[0] != "copy" {
			t.Fatalf("busclient.py monitor: %q", l)
		}
		switch {
		case f[1] == "CALL" && callSerial == "":
			if f[2] != ba || f[3] != sa || strings.Join(f[6:], " ") != "member=Sum memfd=1048576" {
				t.Fatalf("the call's copy: %q", l)
			}
			callSerial = f[4]
		case f[1] == "CALL":
			t.Fatalf("a second copy of the call: %q", l)
		case f[1] == "REPLY":
			if callSerial == "" || f[2] != sa || f[3] != ba || f[5] != callSerial || len(f) != 6 {
				t.Fatalf("the reply's copy: %q (call serial %s)", l, callSerial)
			}
			// serve's BYE and the notices of its leaving may follow.
			p.stdin.Close()
			for range p.lines {
			}
			p.exit(t)
			return
		}
	}
}
