package bus

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
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
	err   strings.Builder
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
