package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/porter-ipc/porter/bus"
	"github.com/porter-ipc/porter/internal/testutil"
)

const (
	busUpServing    = `msg="porter bus up: serving"`
	busServeServing = `msg="porter bus serve: serving"`
)

// busProc is a running porter bus up or porter bus serve.
type busProc struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	stdout *syncBuffer
	done   chan error
}

// busCmd is `porter bus args...` with PORTER_BUS=path; with prefix, run
// through it (setpriv ... --).
func busCmd(path string, prefix []string, args ...string) *exec.Cmd {
	argv := append(append(append([]string{}, prefix...), filepath.Join(binDir, "porter"), "bus"), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "PORTER_BUS="+path)
	cmd.Dir = "/"
	return cmd
}

// startBus starts cmd and waits until its stderr says ready; it is
// stopped with SIGTERM at the end of the test.
func startBus(t *testing.T, cmd *exec.Cmd, ready string) *busProc {
	t.Helper()
	p := &busProc{cmd: cmd, stderr: newSyncBuffer(), stdout: newSyncBuffer(), done: make(chan error, 1)}
	cmd.Stderr, cmd.Stdout = p.stderr, p.stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() { p.stop(t) })
	exited := false
	waitFor(t, strings.Join(cmd.Args, " ")+" to be ready", func() bool {
		select {
		case err := <-p.done:
			p.done <- err
			exited = true
			return true
		default:
			return strings.Contains(p.stderr.String(), ready)
		}
	})
	if exited {
		t.Fatalf("%s exited: %v\n%s", cmd.Args, <-p.done, p.stderr)
	}
	return p
}

// stop sends SIGTERM unless the process has exited, and returns its exit
// error.
func (p *busProc) stop(t *testing.T) error {
	select {
	case err := <-p.done:
		p.done <- err
		return err
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	return p.wait()
}

// wait waits for the process to exit by itself and returns its exit error.
func (p *busProc) wait() error {
	err := <-p.done
	p.done <- err
	return err
}

// busUp starts `porter bus up PATH` in a fresh shared directory.
func busUp(t *testing.T) (path string, p *busProc) {
	t.Helper()
	path = filepath.Join(testutil.SharedDir(t), "run", "bus") // "run" does not exist yet
	return path, startBus(t, busCmd("", nil, "up", path), busUpServing)
}

// busRun runs a porter bus tool to completion.
func busRun(path string, prefix []string, args ...string) (stdout, stderr string, status int) {
	cmd := busCmd(path, prefix, args...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		status = ee.ExitCode()
	case err != nil:
		status = -1
		e.WriteString(err.Error())
	}
	return o.String(), e.String(), status
}

// TestBusTools: porter bus up makes its directory and says where the bus
// is; serve --echo and serve -- PROG answer calls, direct and routed;
// names lists both services with their pids and uid, as a table and as
// JSON; a missing name is exit 2 NAME_HAS_NO_OWNER; a PROG that fails is
// exit 1 with its stderr; a taken name is refused; SIGTERM removes the
// socket.
func TestBusTools(t *testing.T) {
	testutil.CheckLeaks(t)
	path, master := busUp(t)
	waitFor(t, "porter bus up to print the export line", func() bool { return strings.Contains(master.stdout.String(), "\n") })
	if got := master.stdout.String(); got != "PORTER_BUS="+path+"\n" {
		t.Errorf("porter bus up printed %q, want the export line", got)
	}
	if !strings.Contains(master.stderr.String(), `export="PORTER_BUS=`+path+`"`) {
		t.Errorf("the serving line lacks the export line:\n%s", master.stderr)
	}
	echo := startBus(t, busCmd(path, nil, "serve", "com.example.echo", "--echo"), busServeServing)
	prog := startBus(t, busCmd(path, nil, "serve", "--timeout", "30s", "com.example.prog", "--",
		"/bin/sh", "-c", `if [ "$1" = Fail ]; then echo "no such thing: $2" >&2; exit 3; fi; echo "$@"`, "sh"), busServeServing)

	for _, extra := range [][]string{nil, {"--routed"}} {
		args := append(append([]string{"call"}, extra...), "com.example.echo", "Ping", "hello", "", "wörld with spaces")
		out, errOut, st := busRun(path, nil, args...)
		if st != 0 || out != "hello\n\nwörld with spaces\n" {
			t.Errorf("porter bus %q: status %d, stdout %q, stderr %q", args, st, out, errOut)
		}
	}
	if out, errOut, st := busRun(path, nil, "call", "--path", "/a", "--interface", "com.example.Prog", "com.example.prog", "Add", "1", "2"); st != 0 || out != "Add 1 2\n" {
		t.Errorf("call prog: status %d, stdout %q, stderr %q", st, out, errOut)
	}
	if out, errOut, st := busRun(path, nil, "call", "com.example.prog", "Fail", "x"); st != 1 || out != "" ||
		!strings.Contains(errOut, "org.freedesktop.DBus.Error.Failed") || !strings.Contains(errOut, "no such thing: x") {
		t.Errorf("call prog Fail: status %d, stdout %q, stderr %q; want 1 with the error", st, out, errOut)
	}
	if _, errOut, st := busRun(path, nil, "call", "com.example.nobody", "Ping"); st != 2 || !strings.Contains(errOut, "NAME_HAS_NO_OWNER") ||
		strings.Contains(errOut, "porter bus up running") {
		t.Errorf("call a missing name: status %d, stderr %q; want 2 NAME_HAS_NO_OWNER", st, errOut)
	}
	if _, errOut, st := busRun(path, nil, "serve", "com.example.echo", "--echo"); st != 1 || !strings.Contains(errOut, "EXISTS") {
		t.Errorf("serve a taken name: status %d, stderr %q; want 1 EXISTS", st, errOut)
	}

	// A Go endpoint waits in the queue for the echo name: names marks it.
	e, err := bus.DialOptions(context.Background(), path, bus.Options{Label: "queuer"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if v, err := e.RequestName(context.Background(), "com.example.echo", 0); err != nil || v != bus.NameInQueue {
		t.Fatalf("RequestName of a taken name: %d %v, want IN_QUEUE", v, err)
	}
	queuer := strings.Join([]string{addrString(e.Address()), "com.example.echo(queued)", strconv.Itoa(os.Getpid()), strconv.Itoa(os.Geteuid()), "queuer"}, " ")

	out, errOut, st := busRun(path, nil, "names")
	if st != 0 {
		t.Fatalf("names: %d %s", st, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "ADDRESS NAMES PID UID LABEL" ||
		strings.Join(strings.Fields(lines[3]), " ") != queuer {
		t.Fatalf("names (want the queuer last: %s):\n%s", queuer, out)
	}
	for _, p := range []struct {
		name string
		pid  int
	}{{"com.example.echo", echo.cmd.Process.Pid}, {"com.example.prog", prog.cmd.Process.Pid}} {
		want := []string{p.name, strconv.Itoa(p.pid), strconv.Itoa(os.Geteuid()), "porter", "bus", "serve"}
		found := false
		for _, l := range lines[1:] {
			f := strings.Fields(l)
			if len(f) == 7 && strings.HasPrefix(f[0], ":1.") && strings.Join(f[1:], " ") == strings.Join(want, " ") {
				found = true
			}
		}
		if !found {
			t.Errorf("names lacks %q:\n%s", want, out)
		}
	}
	out, errOut, st = busRun(path, nil, "names", "--json")
	var js []busNameJSON
	if st != 0 || json.Unmarshal([]byte(out), &js) != nil || len(js) != 3 {
		t.Fatalf("names --json: %d %s %s", st, out, errOut)
	}
	if q := js[2]; q.PID != uint32(os.Getpid()) || len(q.Names) != 0 || len(q.Queued) != 1 || q.Queued[0] != "com.example.echo" || q.Label != "queuer" {
		t.Errorf("names --json, the queuer: %+v", q)
	}
	for _, n := range js[:2] {
		if n.PID != uint32(echo.cmd.Process.Pid) && n.PID != uint32(prog.cmd.Process.Pid) || n.UID != uint32(os.Geteuid()) ||
			len(n.Names) != 1 || n.Address != n.Primary || n.Label != "porter bus serve" {
			t.Errorf("names --json: %+v", n)
		}
	}

	// PROG as it is, with its args before the member; a PROG past
	// --timeout is killed (with what it started: sleep keeps the pipe);
	// a body that is not strings is InvalidArgs.
	startBus(t, busCmd(path, nil, "serve", "com.example.plain", "--timeout", "1s", "--",
		"/bin/sh", "-c", `if [ "$1" = Nap ]; then sleep 60; fi; /bin/echo pre "$@"`, "sh"), busServeServing)
	if out, errOut, st := busRun(path, nil, "call", "com.example.plain", "Hi", "a"); st != 0 || out != "pre Hi a\n" {
		t.Errorf("call plain: status %d, stdout %q, stderr %q", st, out, errOut)
	}
	if _, errOut, st := busRun(path, nil, "call", "com.example.plain", "Nap"); st != 1 || !strings.Contains(errOut, "killed after 1s") {
		t.Errorf("call a PROG that overruns: status %d, stderr %q; want 1, killed", st, errOut)
	}
	_, err = e.Call(context.Background(), "com.example.plain", &bus.Message{Member: "Hi", Signature: "u", Body: []byte{1, 0, 0, 0}})
	var ce *bus.CallError
	if !errors.As(err, &ce) || ce.Name != "org.freedesktop.DBus.Error.InvalidArgs" {
		t.Errorf("a call with a uint32 body: %v, want InvalidArgs", err)
	}

	if err := master.stop(t); err != nil {
		t.Errorf("porter bus up after SIGTERM: %v\n%s", err, master.stderr)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the bus socket is still there after SIGTERM: %v", err)
	}
	// The services see the bus go and exit 1.
	for _, p := range []*busProc{echo, prog} {
		if err := p.wait(); err == nil || !strings.Contains(p.stderr.String(), "the bus connection ended") {
			t.Errorf("%s: exit 0 after the bus went away\n%s", p.cmd.Args, p.stderr)
		}
	}
}

// TestBusNobody: a service and a client running as nobody (setpriv) join
// a bus root serves and talk, as the default policy lets the same uid do;
// root may call the nobody service too, and names shows nobody's uid.
func TestBusNobody(t *testing.T) {
	testutil.RequireRoot(t)
	setpriv := testutil.RequireProgram(t, "setpriv")
	uid, gid := testutil.Nobody(t)
	asNobody := []string{setpriv, "--reuid", strconv.Itoa(uid), "--regid", strconv.Itoa(gid), "--clear-groups", "--"}
	path, _ := busUp(t)
	srv := startBus(t, busCmd(path, asNobody, "serve", "com.example.nobody", "--echo"), busServeServing)
	for _, who := range []struct {
		name   string
		prefix []string
	}{{"nobody", asNobody}, {"root", nil}} {
		if out, errOut, st := busRun(path, who.prefix, "call", "com.example.nobody", "Ping", "from "+who.name); st != 0 || out != "from "+who.name+"\n" {
			t.Errorf("%s calls nobody's service: status %d, stdout %q, stderr %q", who.name, st, out, errOut)
		}
	}
	out, _, st := busRun(path, asNobody, "names", "--json")
	var js []busNameJSON
	if st != 0 || json.Unmarshal([]byte(out), &js) != nil || len(js) != 1 || js[0].UID != uint32(uid) || js[0].PID != uint32(srv.cmd.Process.Pid) {
		t.Errorf("names as nobody: %d %s", st, out)
	}
}

// TestBusHelp: porter bus and each of its tools answer --help with status
// 0, and every option line shows a placeholder in capitals for its value
// (or none for a boolean), as the other commands do.
func TestBusHelp(t *testing.T) {
	bools := map[string]bool{"-json": true, "-echo": true, "-routed": true}
	line := regexp.MustCompile(`^  (-[a-z-]+)(?: (\S+))?`)
	if _, errOut, st := busRun("", nil, "--help"); st != 0 || !strings.Contains(errOut, "porter bus serve [options] NAME") {
		t.Errorf("porter bus --help: %d\n%s", st, errOut)
	}
	for _, tool := range []string{"up", "names", "call", "serve"} {
		_, out, st := busRun("", nil, tool, "--help")
		if st != 0 {
			t.Errorf("porter bus %s --help: status %d", tool, st)
		}
		n := 0
		for _, l := range strings.Split(out, "\n") {
			m := line.FindStringSubmatch(l)
			if m == nil {
				continue
			}
			n++
			if !bools[m[1]] && (m[2] == "" || strings.ToUpper(m[2]) != m[2]) {
				t.Errorf("porter bus %s --help: %q: want a placeholder in capitals", tool, l)
			}
		}
		if n == 0 || !strings.Contains(out, "-bus PATH") {
			t.Errorf("porter bus %s --help lists no --bus PATH:\n%s", tool, out)
		}
	}
	if _, errOut, st := busRun("", nil, "serve", "com.example.x"); st != 2 || !strings.Contains(errOut, "either --echo or -- PROG") {
		t.Errorf("serve without --echo or PROG: %d %s", st, errOut)
	}
	if _, errOut, st := busRun("", nil, "call", "com.example.x", "Bad-Member"); st != 2 || !strings.Contains(errOut, "MEMBER") {
		t.Errorf("call with a bad member: %d %s", st, errOut)
	}
	for _, dest := range []string{"bad name", ":1.0", "nodots"} {
		if _, errOut, st := busRun("", nil, "call", dest, "Ping"); st != 2 || !strings.Contains(errOut, "neither an address") {
			t.Errorf("call %q: %d %s", dest, st, errOut)
		}
	}
	noBus := filepath.Join(t.TempDir(), "bus")
	for _, tool := range [][]string{{"names"}, {"call", "com.example.x", "Ping"}, {"serve", "com.example.x", "--echo"}} {
		if _, errOut, st := busRun(noBus, nil, tool...); st == 0 || !strings.Contains(errOut, "is porter bus up running there?") {
			t.Errorf("porter bus %s without a bus: %d %s", tool[0], st, errOut)
		}
	}
}

// TestBusUpDBus: porter bus up PATH --dbus SOCK also serves D-Bus, prints
// the address to export, and `porter bus serve NAME --echo` answers
// busctl (the example); SIGTERM removes both sockets.
func TestBusUpDBus(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := testutil.SharedDir(t)
	path, sock := filepath.Join(dir, "bus"), filepath.Join(dir, "d", "dbus")
	master := startBus(t, busCmd("", nil, "up", path, "--dbus", sock), busUpServing)
	want := "PORTER_BUS=" + path + "\nDBUS_SESSION_BUS_ADDRESS=unix:path=" + sock + "\n"
	// Standard output is copied from its pipe by a goroutine of its own:
	// it may come after the serving line on standard error.
	waitFor(t, "porter bus up --dbus to print the export lines", func() bool { return len(master.stdout.String()) >= len(want) })
	if got := master.stdout.String(); got != want {
		t.Errorf("porter bus up --dbus printed %q, want %q", got, want)
	}
	startBus(t, busCmd(path, nil, "serve", "com.example.echo", "--echo"), busServeServing)
	busctl := testutil.RequireProgram(t, "busctl")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, busctl, "--address=unix:path="+sock, "call", "com.example.echo", "/x", "com.example.I", "Foo", "s", "hi").CombinedOutput()
	if err != nil || string(out) != "s \"hi\"\n" {
		t.Errorf("busctl call: %v %q, want s \"hi\"", err, out)
	}
	if err := master.stop(t); err != nil {
		t.Errorf("porter bus up: %v\n%s", err, master.stderr)
	}
	for _, p := range []string{path, sock} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is still there after SIGTERM (%v)", p, err)
		}
	}
}
