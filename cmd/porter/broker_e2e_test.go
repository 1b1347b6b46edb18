package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/porter-ipc/porter"
	"github.com/porter-ipc/porter/internal/testutil"
)

// binDir holds porter and porter-creator built for this test run, where
// nobody may execute them.
var binDir string

// upServing is in porter up's log once it serves; its usage text (printed
// on a bad flag) says "serving" too, so tests wait for the whole field.
const upServing = `msg="porter up: serving"`

func TestMain(m *testing.M) {
	testutil.RunChildren(map[string]func() int{
		"accept-one":  childAcceptOne,
		"http-listen": childHTTPListen,
	})
	testutil.MainWithCommands(m, func(dir string) { binDir = dir }, "./cmd/porter", "./cmd/porter-creator")
}

// daemon is a running `porter up`.
type daemon struct {
	cmd    *exec.Cmd
	dir    string
	sock   string
	stderr *syncBuffer
}

type syncBuffer struct {
	mu chan struct{}
	b  bytes.Buffer
}

func newSyncBuffer() *syncBuffer {
	s := &syncBuffer{mu: make(chan struct{}, 1)}
	return s
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu <- struct{}{}
	defer func() { <-s.mu }()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu <- struct{}{}
	defer func() { <-s.mu }()
	return s.b.String()
}

// up starts `porter up` as root (it drops to nobody) in a fresh directory,
// with extra arguments, and waits for its control socket. dir may be ""
// for a new one, or an earlier daemon's, to restart in place.
func up(t testing.TB, dir string, args ...string) *daemon {
	t.Helper()
	testutil.RequireRoot(t)
	if dir == "" {
		dir = testutil.SharedDir(t)
	}
	d := &daemon{dir: dir, sock: filepath.Join(dir, "porter.sock"), stderr: newSyncBuffer()}
	d.cmd = exec.Command(filepath.Join(binDir, "porter"), append([]string{"up", "--dir", dir}, args...)...)
	d.cmd.Stderr = d.stderr
	d.cmd.Env = append(os.Environ(), "PORTER_CREATOR="+filepath.Join(binDir, "porter-creator"))
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.stop(t)
		if t.Failed() {
			t.Logf("porter up log:\n%s", d.stderr.String())
		}
	})
	waitFor(t, "porter up to serve", func() bool { return strings.Contains(d.stderr.String(), upServing) })
	return d
}

// stop sends SIGTERM and waits; it is idempotent.
func (d *daemon) stop(t testing.TB) {
	if d.cmd.ProcessState != nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { d.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		d.cmd.Process.Kill()
		<-done
		t.Error("porter up did not stop on SIGTERM within 10s")
	}
}

// porterCmd returns `porter args...` against d, run as uid/gid when uid >= 0.
func (d *daemon) porterCmd(uid, gid int, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(binDir, "porter"), args...)
	cmd.Env = append(os.Environ(), "PORTER_SOCKET="+d.sock)
	if uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		cmd.Dir = "/"
	}
	return cmd
}

// ls returns `porter ls --json`.
func (d *daemon) ls(t testing.TB) lsJSON {
	t.Helper()
	out, err := d.porterCmd(-1, -1, "ls", "--json").Output()
	if err != nil {
		t.Fatalf("porter ls --json: %v", err)
	}
	var l lsJSON
	if err := json.Unmarshal(out, &l); err != nil {
		t.Fatalf("porter ls --json: %v\n%s", err, out)
	}
	return l
}

// refs returns the reference count porter ls shows for addr, or -1 when
// it does not list addr at all.
func (l lsJSON) refs(addr string) int {
	for _, s := range l.Sockets {
		if s.Address == addr {
			return s.Refs
		}
	}
	return -1
}

var waitFor = testutil.WaitFor

func freePort(t *testing.T) int { return int(testutil.FreePort(t)) }

func procStatus(t testing.TB, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return ""
}

// TestUpDropsPrivileges: as root, porter up runs as nobody with no
// capabilities and its creator as nobody with CAP_NET_BIND_SERVICE alone;
// the control socket is 0666.
func TestUpDropsPrivileges(t *testing.T) {
	d := up(t, "")
	uid, _ := testutil.Nobody(t)
	want := strings.Repeat(strconv.Itoa(uid)+" ", 4)
	if got := procStatus(t, d.cmd.Process.Pid, "Uid"); got+" " != want {
		t.Errorf("porter up Uid: %s, want %s", got, want)
	}
	if got := procStatus(t, d.cmd.Process.Pid, "CapEff"); got != "0000000000000000" {
		t.Errorf("porter up CapEff: %s, want none", got)
	}
	cpid := creatorPID(t, d)
	// The creator locks itself down before its first request, maybe
	// after porter up says it serves.
	waitFor(t, "the creator's lockdown", func() bool { return procStatus(t, cpid, "Seccomp") == "2" })
	if got := procStatus(t, cpid, "Uid"); got+" " != want {
		t.Errorf("creator Uid: %s, want %s", got, want)
	}
	if got := procStatus(t, cpid, "CapEff"); got != "0000000000000400" {
		t.Errorf("creator CapEff: %s, want CAP_NET_BIND_SERVICE (0x400) alone", got)
	}
	st, err := os.Stat(d.sock)
	if err != nil || st.Mode().Perm() != 0o666 || st.Mode()&os.ModeSocket == 0 {
		t.Errorf("control socket: %v %v, want a socket with mode 0666", st.Mode(), err)
	}
}

// TestRulesPort80: by default nobody gets a port below 1024; with a rule
// for nobody, nobody gets port 80 and root still does not.
func TestRulesPort80(t *testing.T) {
	testutil.CheckLeaks(t)
	uid, gid := testutil.Nobody(t)
	run := func(d *daemon, uid, gid int, url string) (string, error) {
		out, err := d.porterCmd(uid, gid, "run", "--listen", url, "--", "/bin/sh", "-c", "echo got $LISTEN_FDS").CombinedOutput()
		return string(out), err
	}
	d := up(t, "")
	if out, err := run(d, uid, gid, "tcp://127.0.0.1:80"); err == nil || !strings.Contains(out, "below 1024") {
		t.Fatalf("nobody, port 80, no rules: %v %q, want a refusal naming the rule", err, out)
	}
	d.stop(t)

	rules := filepath.Join(d.dir, "rules")
	if err := os.WriteFile(rules, []byte("# nobody serves HTTP\nallow uid=nobody proto=tcp port=80\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d = up(t, "", "--rules", rules)
	if out, err := run(d, uid, gid, "tcp://127.0.0.1:80"); err != nil || strings.TrimSpace(out) != "got 1" {
		t.Fatalf("nobody, port 80, allowed: %v %q", err, out)
	}
	if out, err := run(d, uid, gid, "tcp://127.0.0.1:81"); err == nil || !strings.Contains(out, "denied") {
		t.Errorf("nobody, port 81: %v %q, want denied", err, out)
	}
	if out, err := run(d, uid, gid, "udp://127.0.0.1:80"); err == nil || !strings.Contains(out, "denied") {
		t.Errorf("nobody, udp port 80: %v %q, want denied", err, out)
	}
	if out, err := run(d, 0, 0, "tcp://127.0.0.1:80"); err == nil || !strings.Contains(out, "denied") {
		t.Errorf("root, port 80 (rule is for nobody): %v %q, want denied", err, out)
	}
}

func inode(t *testing.T, pid, fd int) string {
	t.Helper()
	l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// startRun starts `porter run` of PROG under d and waits until PROG holds
// its sockets (LISTEN_FDS set in its environment).
func startRun(t *testing.T, d *daemon, uid, gid int, args ...string) *exec.Cmd {
	t.Helper()
	cmd := d.porterCmd(uid, gid, append([]string{"run"}, args...)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	waitFor(t, "porter run to exec its program", func() bool {
		env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", cmd.Process.Pid))
		return bytes.Contains(env, []byte("LISTEN_FDS="))
	})
	return cmd
}

// TestShareKillRebind: two porter run processes share one listening
// socket (the same inode at their fd 3, one open file description);
// kill -9 of both brings the references to zero in porter ls, and the
// port can be bound again.
func TestShareKillRebind(t *testing.T) {
	testutil.CheckLeaks(t)
	d := up(t, "")
	port := freePort(t)
	url := fmt.Sprintf("web=tcp://127.0.0.1:%d", port)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	a := startRun(t, d, -1, -1, "--listen", url, "--app", "web", "--", "sleep", "60")
	b := startRun(t, d, -1, -1, "--listen", url, "--app", "web", "--", "sleep", "60")
	ia, ib := inode(t, a.Process.Pid, 3), inode(t, b.Process.Pid, 3)
	if ia != ib || !strings.HasPrefix(ia, "socket:") {
		t.Fatalf("fd 3: %s and %s, want the same socket", ia, ib)
	}
	env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", a.Process.Pid))
	for _, v := range []string{"LISTEN_PID=" + strconv.Itoa(a.Process.Pid), "LISTEN_FDS=1", "LISTEN_FDNAMES=web", "PORTER_BROKER_FD=4"} {
		if !bytes.Contains(env, append([]byte(v), 0)) {
			t.Errorf("environment lacks %s", v)
		}
	}
	if n := d.ls(t).refs(addr); n != 2 {
		t.Fatalf("porter ls: %d references, want 2", n)
	}
	// Another application may not have it (share mode app).
	out, err := d.porterCmd(-1, -1, "run", "--listen", url, "--app", "other", "--", "true").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "web") {
		t.Errorf("another app: %v %q, want a conflict naming the holder's app", err, out)
	}
	if _, err := net.Listen("tcp", addr); err == nil {
		t.Fatal("the port is bindable while held")
	}
	a.Process.Kill()
	a.Wait()
	waitFor(t, "one reference", func() bool { return d.ls(t).refs(addr) == 1 })
	b.Process.Kill()
	b.Wait()
	// At zero references (no --linger) the broker closes its copy and
	// porter ls no longer lists it (TestLingerKeepsBacklog sees a listed 0).
	waitFor(t, "zero references: the socket gone from porter ls", func() bool { return d.ls(t).refs(addr) == -1 })
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("after kill -9 of both holders the port is still taken: %v", err)
	}
	l.Close()
}

// TestShareMatrixRun: every cell of the share-mode matrix between two
// porter run processes (TCP; the broker's tests cover UDP too): a shared
// request gets the holder's very socket, a refused one an error naming
// the holder's mode and application.
func TestShareMatrixRun(t *testing.T) {
	testutil.CheckLeaks(t)
	d := up(t, "")
	modes := []string{"none", "app", "any"}
	for _, hm := range modes {
		for _, rm := range modes {
			for _, app := range []string{"web", "dns"} {
				t.Run(fmt.Sprintf("holder=%s/req=%s/app=%s", hm, rm, app), func(t *testing.T) {
					same := app == "web"
					want := hm != "none" && rm != "none" && (same || hm == "any" && rm == "any")
					url := fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
					holder := startRun(t, d, -1, -1, "--listen", url, "--share", hm, "--app", "web", "--", "sleep", "60")
					defer func() { holder.Process.Kill(); holder.Wait() }()
					out, err := d.porterCmd(-1, -1, "run", "--listen", url, "--share", rm, "--app", app, "--",
						"readlink", "/proc/self/fd/3").CombinedOutput()
					if want {
						if err != nil || strings.TrimSpace(string(out)) != inode(t, holder.Process.Pid, 3) {
							t.Fatalf("want the holder's socket: %v %q", err, out)
						}
						return
					}
					if err == nil || !strings.Contains(string(out), "share="+hm) || !strings.Contains(string(out), `app="web"`) {
						t.Fatalf("want a refusal naming the holder's mode and app: %v %q", err, out)
					}
				})
			}
		}
	}
}

// TestLingerKeepsBacklog: with --linger, a connection queued on the
// socket of a daemon killed with -9 is accepted by the restarted daemon,
// because the broker kept the very same socket.
func TestLingerKeepsBacklog(t *testing.T) {
	testutil.CheckLeaks(t)
	d := up(t, "", "--linger", "30s")
	port := freePort(t)
	url := fmt.Sprintf("tcp://127.0.0.1:%d", port)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	first := startRun(t, d, -1, -1, "--listen", url, "--app", "echo", "--", "sleep", "60")
	c, err := net.Dial("tcp", addr) // queued in the backlog: sleep never accepts
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("queued before the restart\n"))
	first.Process.Kill()
	first.Wait()
	waitFor(t, "the socket to linger", func() bool {
		for _, s := range d.ls(t).Sockets {
			if s.Address == addr && s.Refs == 0 && s.LingerS > 0 {
				return true
			}
		}
		return false
	})
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	second := d.porterCmd(-1, -1, "run", "--listen", url, "--app", "echo", "--", self, "-test.run=^$")
	second.Env = append(second.Env, testutil.ChildEnv+"=accept-one")
	// Without linger the queued connection is gone and the child would
	// wait in accept forever: give it 15 seconds.
	kill := time.AfterFunc(15*time.Second, func() { second.Process.Kill() })
	out, err := second.CombinedOutput()
	kill.Stop()
	if err != nil || strings.TrimSpace(string(out)) != "queued before the restart" {
		t.Fatalf("restarted daemon: %v %q, want the queued line", err, out)
	}
}

// childAcceptOne takes its listener from socket activation (porter run),
// accepts one connection and prints its first line.
func childAcceptOne() int {
	ls, err := porter.Listeners()
	if err != nil || len(ls) != 1 || ls[0] == nil {
		fmt.Fprintf(os.Stderr, "listeners: %v %v\n", ls, err)
		return 1
	}
	c, err := ls[0].Accept()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Print(line)
	return 0
}

// TestGoListenHTTP: a Go program that changed net.Listen to porter.Listen
// serves HTTP on port 80 as nobody, through the real porter up.
func TestGoListenHTTP(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := testutil.SharedDir(t)
	rules := filepath.Join(dir, "rules")
	os.WriteFile(rules, []byte("allow uid=nobody proto=tcp port=80 addr=127.0.0.1\n"), 0o644)
	d := up(t, "", "--rules", rules)
	uid, gid := testutil.Nobody(t)
	child := testutil.Child(t, "http-listen", uid, gid)
	child.Env = append(child.Env, "PORTER_SOCKET="+d.sock)
	out, _ := child.StdoutPipe()
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { child.Process.Kill(); child.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "listening" {
		t.Fatalf("child: %q %v", line, err)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://127.0.0.1:80/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("hello from uid %d", uid); string(body) != want {
		t.Fatalf("body %q, want %q", body, want)
	}
}

func childHTTPListen() int {
	l, err := porter.Listen("tcp", "127.0.0.1:80")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("listening")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from uid %d", os.Getuid())
	})}
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestLighttpd: a real socket-activation-aware daemon from Debian,
// lighttpd with server.systemd-socket-activation, serves a page on port
// 80 as nobody with no privilege, through porter run.
func TestLighttpd(t *testing.T) {
	testutil.CheckLeaks(t)
	bin := "/usr/sbin/lighttpd"
	if _, err := os.Stat(bin); err != nil {
		bin = testutil.RequireProgram(t, "lighttpd")
	}
	dir := testutil.SharedDir(t)
	os.WriteFile(filepath.Join(dir, "index.html"), []byte("served by lighttpd through porter\n"), 0o644)
	conf := filepath.Join(dir, "lighttpd.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`server.document-root = %q
server.port = 80
server.bind = "127.0.0.1"
server.systemd-socket-activation = "enable"
index-file.names = ("index.html")
`, dir)), 0o644)
	rules := filepath.Join(dir, "rules")
	os.WriteFile(rules, []byte("allow uid=nobody proto=tcp port=80\n"), 0o644)
	d := up(t, "", "--rules", rules)
	uid, gid := testutil.Nobody(t)
	cmd := startRun(t, d, uid, gid, "--listen", "tcp://127.0.0.1:80", "--", bin, "-D", "-f", conf)
	var body []byte
	waitFor(t, "lighttpd to answer", func() bool {
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://127.0.0.1/index.html")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ = io.ReadAll(resp.Body)
		return resp.StatusCode == 200
	})
	if string(body) != "served by lighttpd through porter\n" {
		t.Fatalf("lighttpd answered %q", body)
	}
	if got := procStatus(t, cmd.Process.Pid, "Uid"); !strings.HasPrefix(got, strconv.Itoa(uid)+" ") {
		t.Errorf("lighttpd runs as %s, want nobody", got)
	}
}

// TestPythonBrokerClient drives a real porter up with a client written in
// Python from docs/protocol-broker.md alone.
func TestPythonBrokerClient(t *testing.T) {
	testutil.CheckLeaks(t)
	py := testutil.RequireProgram(t, "python3")
	d := up(t, "")
	out, err := exec.Command(py, "testdata/broker_client.py", d.sock, strconv.Itoa(freePort(t))).CombinedOutput()
	t.Logf("broker_client.py:\n%s", out)
	if err != nil || !strings.Contains(string(out), "all checks passed") {
		t.Fatalf("python broker client: %v", err)
	}
}
