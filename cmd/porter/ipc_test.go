package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/porter-ipc/porter/internal/testutil"
)

var ipcDir = testutil.SharedDir

// ipcServer is a running super-server command of a test.
type ipcServer struct {
	cmd  *exec.Cmd
	logs string        // the file of its stderr, shown when the test fails
	done chan struct{} // closed when it has exited
	err  error         // Wait's result, once done is closed
}

// log returns what the server has written to its stderr.
func (s *ipcServer) log() string {
	b, _ := os.ReadFile(s.logs)
	return string(b)
}

// exited reports whether the server has exited.
func (s *ipcServer) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// serveIPC starts a super-server command line (porter ipcserver or
// s6-ipcserver, both with -1) and waits for its readiness newline.
func serveIPC(t testing.TB, argv ...string) *exec.Cmd { return startIPC(t, argv...).cmd }

// startIPC is serveIPC returning the whole ipcServer. When the test ends
// the server gets SIGABRT, which makes both porter and s6 kill their
// programs (SIGKILL) and exit.
func startIPC(t testing.TB, argv ...string) *ipcServer {
	t.Helper()
	s := &ipcServer{cmd: exec.Command(argv[0], argv[1:]...), done: make(chan struct{})}
	cmd := s.cmd
	// A file, not a pipe: programs the server leaves running keep their
	// stderr, and Wait would wait for them to close a pipe.
	logs, err := os.CreateTemp(t.TempDir(), "stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	s.logs, cmd.Stderr = logs.Name(), logs
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.err = cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s log:\n%s", argv[0], s.log())
		}
		cmd.Process.Signal(syscall.SIGABRT)
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-s.done
		}
	})
	ready := make(chan error, 1)
	go func() {
		_, err := bufio.NewReader(out).ReadString('\n')
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("%s: no readiness line: %v", argv[0], err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: not ready after 10s", argv[0])
	}
	return s
}

// client runs a UCSPI client command line as uid/gid (uid < 0: as the
// test) and returns what it printed. After 10 seconds it kills the
// client's whole process group, so a test whose client hangs fails
// instead of waiting for a grandchild that holds stdout.
func client(t *testing.T, uid, gid int, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if uid >= 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, _ := cmd.Output()
	return string(out)
}

const envProg = `env | grep -E '^(PROTO|IPC[A-Z]*|GREETING|RULE)=' | sort`

func porterBin() string { return filepath.Join(binDir, "porter") }

// writeRules writes an s6 accessrules tree under dir: each key of files is
// a path inside it ("uid/0/allow"), each value the file's content.
func writeRules(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for p, v := range files {
		p = filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestIPCInteropEnv: s6-ipcclient against porter ipcserver and against
// s6-ipcserver, the same clients (root unbound, root bound to a path,
// nobody): the server-side program sees the same environment; and
// porter ipcclient talks to s6-ipcserver.
func TestIPCInteropEnv(t *testing.T) {
	testutil.RequireRoot(t)
	s6server := testutil.RequireProgram(t, "s6-ipcserver")
	s6client := testutil.RequireProgram(t, "s6-ipcclient")
	dir := ipcDir(t)
	ps, ss := filepath.Join(dir, "porter.sock"), filepath.Join(dir, "s6.sock")
	serveIPC(t, porterBin(), "ipcserver", "-1", ps, "--", "sh", "-c", envProg)
	serveIPC(t, s6server, "-1", ss, "sh", "-c", envProg)
	uid, gid := testutil.Nobody(t)
	for _, c := range []struct {
		name     string
		uid, gid int
		bind     bool
	}{{"root", -1, -1, false}, {"root bound", -1, -1, true}, {"nobody", uid, gid, false}} {
		var outs []string
		for _, sock := range []string{ps, ss} {
			argv := []string{s6client}
			if c.bind {
				bound := filepath.Join(dir, "client.sock")
				os.Remove(bound)
				argv = append(argv, "-p", bound)
			}
			outs = append(outs, client(t, c.uid, c.gid, append(argv, sock, "sh", "-c", "cat <&6")...))
		}
		if outs[0] != outs[1] || !strings.Contains(outs[0], "PROTO=IPC") {
			t.Errorf("%s: porter ipcserver's program sees\n%s\ns6-ipcserver's sees\n%s", c.name, outs[0], outs[1])
		}
		if c.bind && !strings.Contains(outs[0], "IPCREMOTEPATH="+filepath.Join(dir, "client.sock")) {
			t.Errorf("%s: IPCREMOTEPATH missing:\n%s", c.name, outs[0])
		}
	}

	// porter ipcclient → s6-ipcserver, and the client side's environment
	// against s6-ipcclient's.
	es := filepath.Join(dir, "echo.sock")
	serveIPC(t, s6server, "-1", es, "sh", "-c", `read l; echo "pong $l"`)
	clientProg := `echo ping >&7; head -1 <&6; ` + envProg
	got := client(t, -1, -1, porterBin(), "ipcclient", es, "--", "sh", "-c", clientProg)
	want := client(t, -1, -1, s6client, es, "sh", "-c", clientProg)
	if got != want || !strings.HasPrefix(got, "pong ping\n") {
		t.Errorf("porter ipcclient → s6-ipcserver:\n%s\ns6-ipcclient → s6-ipcserver:\n%s", got, want)
	}
	got = client(t, -1, -1, porterBin(), "ipcclient", "-l", "name", es, "sh", "-c", clientProg)
	want = client(t, -1, -1, s6client, "-l", "name", es, "sh", "-c", clientProg)
	if got != want || !strings.Contains(got, "IPCLOCALPATH=name") {
		t.Errorf("with -l: porter ipcclient:\n%s\ns6-ipcclient:\n%s", got, want)
	}
}

// TestIPCAccessRulesInterop: one rules directory made for
// s6-ipcserver-access (and its CDB from s6-accessrules-cdb-from-fs) gives
// the same decisions and the same env under porter ipcserver -i / -x, for
// root, nobody, a uid with only a gid rule and a uid with no rule of its
// own.
func TestIPCAccessRulesInterop(t *testing.T) {
	testutil.RequireRoot(t)
	s6server := testutil.RequireProgram(t, "s6-ipcserver")
	s6access := testutil.RequireProgram(t, "s6-ipcserver-access")
	s6client := testutil.RequireProgram(t, "s6-ipcclient")
	s6cdb := testutil.RequireProgram(t, "s6-accessrules-cdb-from-fs")
	dir := ipcDir(t)
	uid, gid := testutil.Nobody(t)
	rules := filepath.Join(dir, "rules")
	writeRules(t, rules, map[string]string{
		"uid/0/allow":                   "",
		"uid/0/env/GREETING":            "hello root\n",
		fmt.Sprintf("uid/%d/deny", uid): "",
		"gid/4242/deny":                 "",
		"uid/default/allow":             "",
		"uid/default/env/RULE":          "default\n",
	})
	cdb := filepath.Join(dir, "rules.cdb")
	if out, err := exec.Command(s6cdb, cdb, rules).CombinedOutput(); err != nil {
		t.Fatalf("s6-accessrules-cdb-from-fs: %v\n%s", err, out)
	}
	os.Chmod(cdb, 0o644)

	socks := map[string]string{}
	for name, argv := range map[string][]string{
		"porter -i": {porterBin(), "ipcserver", "-1", "-i", rules, "@", "--", "sh", "-c", envProg},
		"porter -x": {porterBin(), "ipcserver", "-1", "-x", cdb, "@", "--", "sh", "-c", envProg},
		"s6 -i":     {s6server, "-1", "@", s6access, "-i", rules, "sh", "-c", envProg},
		"s6 -x":     {s6server, "-1", "@", s6access, "-x", cdb, "sh", "-c", envProg},
	} {
		sock := filepath.Join(dir, strings.ReplaceAll(name, " ", "")+".sock")
		for i, a := range argv {
			if a == "@" {
				argv[i] = sock
			}
		}
		serveIPC(t, argv...)
		socks[name] = sock
	}
	for _, c := range []struct {
		name     string
		uid, gid int
		allowed  bool
	}{
		{"root", 0, 0, true},
		{"nobody", uid, gid, false},
		{"gid 4242", 23456, 4242, false},
		{"no rule of its own", 12345, 12345, true},
	} {
		// IPCLOCALPATH is each server's own socket: compare it as SOCK.
		run := func(name string) string {
			out := client(t, c.uid, c.gid, s6client, socks[name], "sh", "-c", "cat <&6")
			return strings.ReplaceAll(out, "IPCLOCALPATH="+socks[name]+"\n", "IPCLOCALPATH=SOCK\n")
		}
		want := run("s6 -i")
		if (want != "") != c.allowed || c.allowed && !strings.Contains(want, "IPCLOCALPATH=SOCK\n") {
			t.Fatalf("%s: s6-ipcserver-access answered %q; the test's rules are wrong", c.name, want)
		}
		for _, name := range []string{"porter -i", "porter -x", "s6 -x"} {
			if got := run(name); got != want {
				t.Errorf("%s under %s:\n%q\nunder s6 -i:\n%q", c.name, name, got, want)
			}
		}
	}
}

// TestIPCServerFaults: a PROG that cannot be run, the per-uid limit, and
// the total limit, through the command.
func TestIPCServerFaults(t *testing.T) {
	dir := ipcDir(t)
	// PROG does not exist: the client sees end of stream, the server
	// keeps serving.
	bad := filepath.Join(dir, "bad.sock")
	serveIPC(t, porterBin(), "ipcserver", "-1", bad, "--", "/nonexistent/prog")
	for i := 0; i < 2; i++ {
		if out := client(t, -1, -1, porterBin(), "ipcclient", bad, "--", "sh", "-c", "cat <&6; echo eof"); out != "eof\n" {
			t.Fatalf("exec failure seen by the client: %q", out)
		}
	}

	// -C 1: a second connection from the same uid is closed at once while
	// the first is served, which goes on unaffected; -c 2 lets a client of
	// another uid in. PROG holds its slot until its client leaves.
	lim := filepath.Join(dir, "lim.sock")
	serveIPC(t, porterBin(), "ipcserver", "-1", "-C", "1", "-c", "2", lim, "--", "sh", "-c", "echo hello; exec cat")
	first, hello := dialLine(t, lim)
	if hello != "hello" {
		t.Fatalf("first client: %q", hello)
	}
	if got := client(t, -1, -1, porterBin(), "ipcclient", lim, "--", "sh", "-c", "head -1 <&6; echo closed"); got != "closed\n" {
		t.Errorf("second client of the same uid: %q, want to be closed at once", got)
	}
	if !first.echoes() {
		t.Errorf("the first client is no longer served after the second was refused")
	}
	if os.Geteuid() == 0 {
		uid, gid := testutil.Nobody(t)
		if got := client(t, uid, gid, porterBin(), "ipcclient", lim, "--", "sh", "-c", "head -1 <&6"); got != "hello\n" {
			t.Errorf("a client of another uid: %q, want served", got)
		}
	}
	if !first.echoes() {
		t.Errorf("the first client is no longer served after another uid's")
	}
}

// TestIPCMaxConns: with -c 1 a second client waits in the listen backlog
// (the kernel counts it there: connected, not accepted) while the first
// is served, and is served once the first leaves.
func TestIPCMaxConns(t *testing.T) {
	testutil.CheckLeaks(t)
	path := filepath.Join(ipcDir(t), "one.sock")
	serveIPC(t, porterBin(), "ipcserver", "-1", "-c", "1", path, "sh", "-c", "echo hello; exec cat")
	first, hello := dialLine(t, path)
	if hello != "hello" {
		t.Fatalf("first client: %q", hello)
	}
	second, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	testutil.WaitFor(t, "the second client in the backlog", func() bool { return backlogLen(t, path) == 1 })
	if !first.echoes() || backlogLen(t, path) != 1 {
		t.Fatalf("with -c 1 and the first client served, the second was accepted (backlog %d)", backlogLen(t, path))
	}
	first.Close()
	second.SetReadDeadline(time.Now().Add(10 * time.Second))
	if l, err := bufio.NewReader(second).ReadString('\n'); l != "hello\n" {
		t.Fatalf("second client after the first left: %q %v", l, err)
	}
}

// exitCode runs a command line with no input and returns its exit status.
func exitCode(t *testing.T, argv ...string) int {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	kill := time.AfterFunc(10*time.Second, func() { cmd.Process.Kill() })
	defer kill.Stop()
	out, err := cmd.CombinedOutput()
	if err == nil {
		return 0
	}
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() < 0 {
		t.Fatalf("%q: %v\n%s", argv, err, out)
	}
	return ee.ExitCode()
}

// TestIPCExitCodes: porter ipcserver and ipcclient exit as s6-ipcserver
// and s6-ipcclient do: 100 for a wrong command line, 111 when a system
// call fails (bind, connect), 127 for a PROG that is not there and 126 for
// one that cannot be run. Each case runs both and compares.
func TestIPCExitCodes(t *testing.T) {
	testutil.CheckLeaks(t)
	s6server := testutil.RequireProgram(t, "s6-ipcserver")
	s6client := testutil.RequireProgram(t, "s6-ipcclient")
	dir := ipcDir(t)
	file := filepath.Join(dir, "file")
	noexec := filepath.Join(dir, "noexec")
	for _, f := range []string{file, noexec} {
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	live := filepath.Join(dir, "live.sock")
	serveIPC(t, porterBin(), "ipcserver", "-1", live, "true")
	sock := filepath.Join(dir, "s.sock")
	for _, c := range []struct {
		name string
		args []string // after the tool
		want int
		cli  bool
	}{
		{"server: unknown option", []string{"-Z", sock, "true"}, 100, false},
		{"server: no PROG", []string{sock}, 100, false},
		{"server: nothing", nil, 100, false},
		{"server: bad -c", []string{"-c", "many", sock, "true"}, 100, false},
		{"server: bad -a", []string{"-a", "999", sock, "true"}, 100, false},
		{"server: bad -u", []string{"-u", "abc", sock, "true"}, 100, false},
		{"server: cannot bind", []string{filepath.Join(dir, "no/such/dir/s.sock"), "true"}, 111, false},
		{"server: -D and a file there", []string{"-D", file, "true"}, 111, false},
		{"client: unknown option", []string{"-Z", live, "true"}, 100, true},
		{"client: no PROG", []string{live}, 100, true},
		{"client: no such socket", []string{filepath.Join(dir, "none.sock"), "true"}, 111, true},
		{"client: refused", []string{file, "true"}, 111, true},
		{"client: cannot bind -p", []string{"-p", filepath.Join(dir, "no/such/dir/c.sock"), live, "true"}, 111, true},
		{"client: PROG not found", []string{live, "/nonexistent/prog"}, 127, true},
		{"client: PROG not in PATH", []string{live, "no-such-prog-porter"}, 127, true},
		{"client: PROG not executable", []string{live, noexec}, 126, true},
	} {
		porter, s6 := append([]string{porterBin(), "ipcserver"}, c.args...), append([]string{s6server}, c.args...)
		if c.cli {
			porter, s6 = append([]string{porterBin(), "ipcclient"}, c.args...), append([]string{s6client}, c.args...)
		}
		got, want := exitCode(t, porter...), exitCode(t, s6...)
		if want != c.want {
			t.Errorf("%s: s6 exits %d, the test expects %d", c.name, want, c.want)
		}
		if got != want {
			t.Errorf("%s: porter exits %d, s6 %d", c.name, got, want)
		}
	}
}

// TestIPCClusteredOptions: getopt-style option clusters and attached
// values, as s6 takes them, give the same service under porter as under
// s6-ipcserver (-P: no credentials in the environment).
func TestIPCClusteredOptions(t *testing.T) {
	testutil.CheckLeaks(t)
	s6server := testutil.RequireProgram(t, "s6-ipcserver")
	dir := ipcDir(t)
	ps, ss := filepath.Join(dir, "porter.sock"), filepath.Join(dir, "s6.sock")
	serveIPC(t, porterBin(), "ipcserver", "-1vP", "-c5", "-C2", "-a0700", ps, "sh", "-c", envProg)
	serveIPC(t, s6server, "-1vP", "-c5", "-C2", "-a0700", ss, "sh", "-c", envProg)
	for _, p := range []string{ps, ss} {
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v %v, want mode 0700 (-a0700)", p, st.Mode(), err)
		}
	}
	got := client(t, -1, -1, porterBin(), "ipcclient", "-ql", "name", ps, "sh", "-c", "cat <&6; echo IPCLOCALPATH=$IPCLOCALPATH")
	want := client(t, -1, -1, porterBin(), "ipcclient", "-ql", "name", ss, "sh", "-c", "cat <&6; echo IPCLOCALPATH=$IPCLOCALPATH")
	if got != want || strings.Contains(got, "IPCREMOTEEUID=") || !strings.Contains(got, "IPCLOCALPATH=name") {
		t.Errorf("porter ipcserver -1vP -c5 -C2:\n%s\ns6-ipcserver, same options:\n%s", got, want)
	}
}

// TestIPCClientReplacesFDs67: started with fds 6 and 7 open to something
// else, porter ipcclient puts the connection on them, as s6-ipcclient
// does, instead of failing.
func TestIPCClientReplacesFDs67(t *testing.T) {
	testutil.CheckLeaks(t)
	s6client := testutil.RequireProgram(t, "s6-ipcclient")
	dir := ipcDir(t)
	sock := filepath.Join(dir, "echo.sock")
	serveIPC(t, porterBin(), "ipcserver", "-1", sock, "sh", "-c", `read l; echo "pong $l"`)
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	prog := `echo ping >&7; head -1 <&6; readlink /proc/self/fd/6 /proc/self/fd/7`
	for _, argv := range [][]string{{porterBin(), "ipcclient"}, {s6client}} {
		cmd := exec.Command(argv[0], append(argv[1:], sock, "sh", "-c", prog)...)
		cmd.ExtraFiles = []*os.File{devnull, devnull, devnull, devnull, devnull} // fds 3 to 7
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if err != nil || len(lines) != 3 || lines[0] != "pong ping" || !strings.HasPrefix(lines[1], "socket:") || lines[1] != lines[2] {
			t.Errorf("%s with fds 6 and 7 open: %v %q %s", argv[0], err, out, stderr.String())
		}
	}
}

// procState returns the state letter of /proc/PID/stat ("R", "S", "T",
// "Z" …), or "" when there is no such process.
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2 : i+3]
	}
	return ""
}

// lineConn is a test's own connection to a super-server, read by lines.
type lineConn struct {
	*net.UnixConn
	r *bufio.Reader
}

// dialLine connects to path and returns the connection and its first
// line (without the newline). The connection is closed when the test ends.
func dialLine(t *testing.T, path string) (*lineConn, string) {
	t.Helper()
	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { uc.Close() })
	uc.SetDeadline(time.Now().Add(10 * time.Second))
	c := &lineConn{UnixConn: uc, r: bufio.NewReader(uc)}
	l, err := c.r.ReadString('\n')
	if err != nil {
		t.Fatalf("first line from %s: %q %v", path, l, err)
	}
	return c, strings.TrimSuffix(l, "\n")
}

// echoes reports whether the program at the other end (cat) still
// echoes a line.
func (c *lineConn) echoes() bool {
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return false
	}
	l, err := c.r.ReadString('\n')
	return err == nil && l == "ping\n"
}

// ended reports whether the program at the other end closed the
// connection.
func (c *lineConn) ended() bool {
	_, err := c.r.ReadString('\n')
	return err == io.EOF
}

// sigConn is a connection to a server whose PROG is `echo $$; exec cat`:
// it knows PROG's pid.
type sigConn struct {
	*lineConn
	pid int
}

func dialSig(t *testing.T, path string) *sigConn {
	t.Helper()
	c, l := dialLine(t, path)
	pid, err := strconv.Atoi(l)
	if err != nil {
		t.Fatalf("PROG's pid: %q %v", l, err)
	}
	return &sigConn{c, pid}
}

// TestIPCServerSignals: porter ipcserver and s6-ipcserver, side by side,
// on the signals s6-ipcserverd documents. SIGTERM exits at once and
// leaves PROG serving its client and the socket file in place; SIGHUP
// sends PROG SIGTERM and SIGCONT (a stopped PROG dies) and goes on
// serving; SIGQUIT does the same and exits; SIGABRT kills PROG with
// SIGKILL (one that ignores SIGTERM dies) and exits 0, without Go's
// goroutine dump.
func TestIPCServerSignals(t *testing.T) {
	testutil.CheckLeaks(t)
	s6server := testutil.RequireProgram(t, "s6-ipcserver")
	dir := ipcDir(t)
	const prog = `echo $$; exec cat`
	const stubborn = `trap "" TERM; echo $$; exec cat` // SIGTERM ignored, across exec
	for _, server := range []string{"porter", "s6"} {
		n := 0
		serve := func(script string) (*ipcServer, string) {
			n++
			path := filepath.Join(dir, fmt.Sprintf("%s%d.sock", server, n))
			argv := []string{s6server, "-1", path, "sh", "-c", script}
			if server == "porter" {
				argv = []string{porterBin(), "ipcserver", "-1", path, "sh", "-c", script}
			}
			return startIPC(t, argv...), path
		}
		// signalStopped serves prog, stops the PROG of one client with
		// SIGSTOP and sends the server sig.
		signalStopped := func(sig syscall.Signal) (*ipcServer, string, *sigConn) {
			srv, path := serve(prog)
			c := dialSig(t, path)
			syscall.Kill(c.pid, syscall.SIGSTOP)
			testutil.WaitFor(t, "PROG to stop", func() bool { return procState(c.pid) == "T" })
			srv.cmd.Process.Signal(sig)
			return srv, path, c
		}
		status := func(s *ipcServer) string {
			if s.err != nil {
				return s.err.Error()
			}
			return "0"
		}

		// SIGTERM: out at once; PROG goes on; the socket file stays.
		srv, path := serve(prog)
		c := dialSig(t, path)
		srv.cmd.Process.Signal(syscall.SIGTERM)
		testutil.WaitFor(t, server+" to exit after SIGTERM with a client connected", srv.exited)
		if st := status(srv); st != "0" {
			t.Errorf("%s: SIGTERM: exit %s, want 0", server, st)
		}
		if s := procState(c.pid); s == "" || s == "Z" || !c.echoes() {
			t.Errorf("%s: SIGTERM: PROG %d is %q and no longer serves its client, want it left running", server, c.pid, s)
		}
		if _, err := os.Lstat(path); err != nil {
			t.Errorf("%s: SIGTERM: socket file: %v, want it left in place", server, err)
		}
		c.Close() // PROG (cat) ends at end of stream

		// SIGHUP: a stopped PROG gets SIGTERM and SIGCONT and dies;
		// new clients are still served.
		srv, path, c = signalStopped(syscall.SIGHUP)
		if !c.ended() {
			t.Errorf("%s: SIGHUP: the stopped PROG was not ended by SIGTERM+SIGCONT", server)
		}
		if c2 := dialSig(t, path); !c2.echoes() || srv.exited() {
			t.Errorf("%s: SIGHUP: not serving any more", server)
		}

		// SIGQUIT: the same, and exit.
		srv, _, c = signalStopped(syscall.SIGQUIT)
		if !c.ended() {
			t.Errorf("%s: SIGQUIT: the stopped PROG was not ended by SIGTERM+SIGCONT", server)
		}
		testutil.WaitFor(t, server+" to exit after SIGQUIT", srv.exited)
		if st := status(srv); st != "0" {
			t.Errorf("%s: SIGQUIT: exit %s, want 0", server, st)
		}

		// SIGABRT: SIGKILL for a PROG that ignores SIGTERM; exit 0.
		srv, path = serve(stubborn)
		c = dialSig(t, path)
		srv.cmd.Process.Signal(syscall.SIGABRT)
		if !c.ended() {
			t.Errorf("%s: SIGABRT: PROG (ignoring SIGTERM) was not killed", server)
		}
		testutil.WaitFor(t, server+" to exit after SIGABRT", srv.exited)
		if st := status(srv); st != "0" || strings.Contains(srv.log(), "goroutine ") {
			t.Errorf("%s: SIGABRT: exit %s, want 0 and no goroutine dump:\n%s", server, st, srv.log())
		}
	}
}

// TestIPCAccessExec: a rule's exec file runs instead of PROG, as
// s6-ipcserver-access runs it: `execlineb -Pc CONTENT`, after the rule's
// env/. execlineb is a stand-in here that shows its arguments (the real
// one is checked by hand: s6 runs it from where execline was installed).
// With no execlineb the client is closed, and PROG does not run either.
func TestIPCAccessExec(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := ipcDir(t)
	rules := filepath.Join(dir, "rules")
	writeRules(t, rules, map[string]string{
		"uid/0/allow": "",
		"uid/0/env/V": "from env\n",
		"uid/0/exec":  "echo ${V} {\n  x }\n",
	})
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	fake := "#!/bin/sh\nprintf 'execlineb'; printf ' [%s]' \"$@\"; echo; echo \"V=$V\"\n"
	if err := os.WriteFile(filepath.Join(bin, "execlineb"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	prog := []string{"sh", "-c", "echo PROG ran"}
	with := filepath.Join(dir, "with.sock")
	startIPC(t, append([]string{"env", "PATH=" + bin + ":" + os.Getenv("PATH"), porterBin(), "ipcserver", "-1", "-i", rules, with}, prog...)...)
	got := client(t, -1, -1, porterBin(), "ipcclient", with, "sh", "-c", "cat <&6")
	if want := "execlineb [-Pc] [echo ${V} {\n  x }\n]\nV=from env\n"; got != want {
		t.Errorf("exec rule: PROG's side printed\n%q\nwant\n%q", got, want)
	}

	// No execlineb: refused with a reason, PROG not run.
	only := filepath.Join(dir, "only-sh")
	os.Mkdir(only, 0o755)
	if err := os.Symlink("/bin/sh", filepath.Join(only, "sh")); err != nil {
		t.Fatal(err)
	}
	without := filepath.Join(dir, "without.sock")
	s := startIPC(t, append([]string{"env", "PATH=" + only, porterBin(), "ipcserver", "-1", "-i", rules, without}, prog...)...)
	if got := client(t, -1, -1, porterBin(), "ipcclient", without, "sh", "-c", "cat <&6; echo closed"); got != "closed\n" {
		t.Errorf("exec rule, no execlineb: client got %q, want the connection closed", got)
	}
	testutil.WaitFor(t, "the refusal logged", func() bool { return strings.Contains(s.log(), "execlineb") })
}

// TestIPCAccessExecInterop: with the real execlineb (Debian's execline),
// a rule's exec script sees the rule's env/ and writes the same to the
// client under porter ipcserver as under s6-ipcserver-access.
func TestIPCAccessExecInterop(t *testing.T) {
	testutil.CheckLeaks(t)
	testutil.RequireProgram(t, "execlineb")
	s6server := testutil.RequireProgram(t, "s6-ipcserver")
	s6access := testutil.RequireProgram(t, "s6-ipcserver-access")
	dir := ipcDir(t)
	rules := filepath.Join(dir, "rules")
	writeRules(t, rules, map[string]string{
		"uid/0/allow": "",
		"uid/0/env/V": "from env\n",
		"uid/0/exec":  "importas -i V V\nforeground { echo exec saw ${V} }\nprintenv IPCREMOTEEUID\n",
	})
	prog := []string{"sh", "-c", "echo PROG ran"}
	porterSock, s6Sock := filepath.Join(dir, "porter.sock"), filepath.Join(dir, "s6.sock")
	// Debian's s6 runs /usr/lib/execline/bin/execlineb, with the server's
	// PATH; porter runs execlineb from PATH, on Debian a wrapper that adds
	// that directory to PATH. Give both servers a PATH with it.
	path := "PATH=/usr/lib/execline/bin:" + os.Getenv("PATH")
	serveIPC(t, append([]string{"env", path, porterBin(), "ipcserver", "-1", "-i", rules, porterSock}, prog...)...)
	serveIPC(t, append([]string{"env", path, s6server, "-1", s6Sock, s6access, "-i", rules}, prog...)...)
	got := client(t, -1, -1, porterBin(), "ipcclient", porterSock, "sh", "-c", "cat <&6")
	want := client(t, -1, -1, porterBin(), "ipcclient", s6Sock, "sh", "-c", "cat <&6")
	if got != want || want != "exec saw from env\n0\n" {
		t.Errorf("exec rule: porter's client read %q, s6's %q; want both %q", got, want, "exec saw from env\n0\n")
	}
}

// TestIPCDropPrivileges: -u, -g, -G and -U leave the server, and so each
// PROG, with the same uid, gid and supplementary groups (/proc status) as
// under s6-ipcserver: -G's list comes after the -g gid, or the current
// gid without -g; -U takes $UID, $GID and $GIDLIST and removes them from
// PROG's environment.
func TestIPCDropPrivileges(t *testing.T) {
	testutil.CheckLeaks(t)
	testutil.RequireRoot(t)
	s6server := testutil.RequireProgram(t, "s6-ipcserver")
	uid, gid := testutil.Nobody(t)
	dir := ipcDir(t)
	const prog = `grep -E '^(Uid|Gid|Groups):' /proc/self/status; env | grep -E '^(UID|GID|GIDLIST)=' | sort`
	u, g := strconv.Itoa(uid), strconv.Itoa(gid)
	for i, c := range []struct {
		env  []string
		opts []string
		want string // in the Groups line
	}{
		{nil, []string{"-u", u, "-g", g, "-G", "100,200"}, "Groups:\t100 200 " + g},
		{nil, []string{"-G", "100,200"}, "Groups:\t0 100 200"},
		{[]string{"UID=" + u, "GID=" + g, "GIDLIST=5,6"}, []string{"-U"}, "Groups:\t5 6 " + g},
	} {
		var outs []string
		for _, server := range [][]string{{porterBin(), "ipcserver"}, {s6server}} {
			path := filepath.Join(dir, fmt.Sprintf("%d-%d.sock", i, len(outs)))
			argv := append(append([]string{"env"}, c.env...), server...)
			argv = append(append(append(argv, "-1"), c.opts...), path, "sh", "-c", prog)
			startIPC(t, argv...)
			outs = append(outs, client(t, -1, -1, porterBin(), "ipcclient", path, "sh", "-c", "cat <&6"))
		}
		if outs[0] != outs[1] || !strings.Contains(outs[0], c.want+" \n") { // the kernel ends each group with a space
			t.Errorf("%q: porter ipcserver's PROG:\n%s\ns6-ipcserver's:\n%s\nwant %q", c.opts, outs[0], outs[1], c.want)
		}
	}
	// Where porter differs from s6 on purpose: -u or -g without -G
	// leaves no supplementary group, not the ones root had.
	for _, opts := range [][]string{{"-g", g}, {"-u", u}} {
		path := filepath.Join(dir, "nogroups"+opts[0]+".sock")
		startIPC(t, append(append([]string{"setpriv", "--groups", "4,5", porterBin(), "ipcserver", "-1"}, opts...), path, "sh", "-c", prog)...)
		if out := client(t, -1, -1, porterBin(), "ipcclient", path, "sh", "-c", "cat <&6"); !strings.Contains(out, "Groups:\t \n") {
			t.Errorf("porter ipcserver %s under root with groups 4 and 5: PROG has\n%s\nwant no supplementary group", opts, out)
		}
	}
}

// TestIPCServerOptions: one short check each for options the other tests
// do not cover: --notify-fd, -D (next to s6-ipcserver's), -a as a client
// of another uid sees it, and --allow-uid/--allow-gid.
func TestIPCServerOptions(t *testing.T) {
	testutil.CheckLeaks(t)
	testutil.RequireRoot(t)
	s6server := testutil.RequireProgram(t, "s6-ipcserver")
	dir := ipcDir(t)
	uid, gid := testutil.Nobody(t)
	hello := []string{"sh", "-c", "echo hello"}
	say := func(uid, gid int, path string) string {
		return client(t, uid, gid, porterBin(), "ipcclient", path, "sh", "-c", "cat <&6")
	}

	// --notify-fd 3: a newline on fd 3 once listening, then fd 3 closed.
	notify := filepath.Join(dir, "notify.sock")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := exec.Command(porterBin(), append([]string{"ipcserver", "--notify-fd", "3", notify}, hello...)...)
	cmd.ExtraFiles = []*os.File{w}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	defer func() { cmd.Process.Signal(syscall.SIGABRT); cmd.Wait() }()
	r.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(r); string(b) != "\n" || err != nil {
		t.Errorf("--notify-fd 3: read %q %v, want a newline, then end of file", b, err)
	}
	if got := say(-1, -1, notify); got != "hello\n" {
		t.Errorf("after --notify-fd: %q", got)
	}

	// -D: a socket file left by a server that is gone is refused (and
	// replaced without -D), as s6-ipcserver does.
	stale := filepath.Join(dir, "stale.sock")
	srv := startIPC(t, append([]string{porterBin(), "ipcserver", "-1", stale}, hello...)...)
	srv.cmd.Process.Signal(syscall.SIGTERM)
	testutil.WaitFor(t, "the server to exit", srv.exited)
	for _, argv := range [][]string{{porterBin(), "ipcserver"}, {s6server}} {
		if code := exitCode(t, append(append(argv, "-D", stale), hello...)...); code != 111 {
			t.Errorf("%s -D with a stale socket there: exit %d, want 111", argv[0], code)
		}
	}
	serveIPC(t, append([]string{porterBin(), "ipcserver", "-1", stale}, hello...)...)
	if got := say(-1, -1, stale); got != "hello\n" {
		t.Errorf("without -D the stale socket is not replaced: %q", got)
	}

	// -a 0700: nobody cannot connect at all.
	private := filepath.Join(dir, "private.sock")
	serveIPC(t, append([]string{porterBin(), "ipcserver", "-1", "-a", "0700", private}, hello...)...)
	if got := say(uid, gid, private); got != "" {
		t.Errorf("-a 0700: nobody got %q", got)
	}
	if got := say(-1, -1, private); got != "hello\n" {
		t.Errorf("-a 0700: root got %q", got)
	}

	// --allow-uid 0 serves root only; --allow-gid GID serves nobody's group only.
	for _, c := range []struct {
		opt, ids           string
		root, nobodyServed bool
	}{{"--allow-uid", "0", true, false}, {"--allow-gid", strconv.Itoa(gid), false, true}} {
		path := filepath.Join(dir, c.opt[2:]+".sock")
		serveIPC(t, append([]string{porterBin(), "ipcserver", "-1", c.opt, c.ids, path}, hello...)...)
		if got := say(-1, -1, path); (got == "hello\n") != c.root {
			t.Errorf("%s %s: root got %q", c.opt, c.ids, got)
		}
		if got := say(uid, gid, path); (got == "hello\n") != c.nobodyServed {
			t.Errorf("%s %s: nobody got %q", c.opt, c.ids, got)
		}
	}
}
