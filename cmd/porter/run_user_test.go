package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/porter-ipc/porter/broker"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// The children of these tests run from init, so TestMain's list stays
// as it is.
func init() {
	switch os.Getenv(testutil.ChildEnv) {
	case "run-as-check":
		os.Exit(childRunAsCheck())
	}
}

// childRunAsCheck runs under `porter run --user`: it prints its
// credentials, tries to release $ROOT_TOKEN over the broker connection it
// inherited, says "ready" and waits for stdin to close.
func childRunAsCheck() int {
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	for _, line := range strings.Split(string(st), "\n") {
		for _, f := range []string{"Uid:", "Gid:", "Groups:"} {
			if v, ok := strings.CutPrefix(line, f); ok {
				fmt.Println(f, strings.Join(strings.Fields(v), " "))
			}
		}
	}
	fd, err := strconv.Atoi(os.Getenv("PORTER_BROKER_FD"))
	if err != nil {
		fmt.Println("PORTER_BROKER_FD:", err)
		return 1
	}
	cl, err := broker.NewClient(os.NewFile(uintptr(fd), "broker"))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer cl.Close()
	tok, err := broker.ParseToken(os.Getenv("ROOT_TOKEN"))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	err = cl.Release(tok)
	fmt.Printf("release of root's token: not yours %v: %v\n", errors.Is(err, broker.ErrNotYours), err)
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// TestRunUser: as root, porter run --user nobody runs PROG as nobody
// (all four uids, nobody's groups), the broker lists nobody as the holder
// of its socket, and over the connection PROG inherited it cannot release
// a token of root's (a root connection would: the peer credentials of a
// connection are those of its connect(2), whatever the process becomes).
func TestRunUser(t *testing.T) {
	testutil.CheckLeaks(t)
	d := up(t, "")
	uid, gid := testutil.Nobody(t)

	root, err := broker.Dial(d.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	rootAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(freePort(t)))
	g, err := root.Request(broker.Request{Proto: broker.TCP, Addr: rootAddr, Share: broker.ShareNone, App: "root"})
	if err != nil {
		t.Fatal(err)
	}
	g.File.Close()

	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := d.porterCmd(-1, -1, "run", "--user", "nobody", "--listen", "tcp://"+addr, "--", testutil.WorldExecutable(t), "-test.run=^$")
	cmd.Env = append(cmd.Env, testutil.ChildEnv+"=run-as-check", "ROOT_TOKEN="+g.Token.String())
	cmd.Dir = "/"
	cmd.Stderr = os.Stderr
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
	defer func() { stdin.Close(); cmd.Wait() }()
	var out []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() && sc.Text() != "ready" {
		out = append(out, sc.Text())
	}
	got := strings.Join(out, "\n")
	want := []string{
		fmt.Sprintf("Uid: %d %d %d %d", uid, uid, uid, uid),
		fmt.Sprintf("Gid: %d %d %d %d", gid, gid, gid, gid),
		"release of root's token: not yours true",
	}
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("PROG said:\n%s\nwant a line with %q", got, w)
		}
	}
	if strings.Contains(got, "Groups: 0") {
		t.Errorf("PROG kept root's group: %s", got)
	}
	l := d.ls(t)
	for _, s := range l.Sockets {
		switch s.Address {
		case addr:
			if len(s.Holders) != 1 || s.Holders[0].UID != uid || s.Holders[0].PID != cmd.Process.Pid || s.Holders[0].State != "held" {
				t.Errorf("porter ls: %s held by %+v, want one reference held by nobody (uid %d), pid %d", addr, s.Holders, uid, cmd.Process.Pid)
			}
		case rootAddr.String():
			if s.Refs != 1 {
				t.Errorf("porter ls: root's socket has %d references: PROG released it", s.Refs)
			}
		}
	}
	if l.refs(addr) != 1 || l.refs(rootAddr.String()) != 1 {
		t.Errorf("porter ls: %+v, want both sockets with one reference", l)
	}
}

// TestRunUserNotRoot: --user needs root, and says so.
func TestRunUserNotRoot(t *testing.T) {
	d := up(t, "")
	uid, gid := testutil.Nobody(t)
	out, err := d.porterCmd(uid, gid, "run", "--user", "root", "--listen", "tcp://127.0.0.1:0", "--", "true").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "only root may switch users") {
		t.Fatalf("porter run --user as nobody: %v %q", err, out)
	}
	out, err = d.porterCmd(-1, -1, "run", "--user", "no-such-user-here", "--listen", "tcp://127.0.0.1:0", "--", "true").CombinedOutput()
	if err == nil || !strings.Contains(string(out), `no user "no-such-user-here"`) {
		t.Fatalf("porter run --user no-such-user-here: %v %q", err, out)
	}
}

// TestRunFDInTheWay: an fd that porter run inherits on 3 (s6's
// notification-fd 3, say) is named with what it is and what to do, not
// "internal error"; one above the LISTEN_FDS range reaches PROG.
func TestRunFDInTheWay(t *testing.T) {
	testutil.CheckLeaks(t)
	d := up(t, "")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	pipe, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", testutil.FD(t, w)))
	cmd := d.porterCmd(-1, -1, "run", "--listen", "tcp://127.0.0.1:0", "--", "true")
	cmd.ExtraFiles = []*os.File{w} // fd 3
	out, err := cmd.CombinedOutput()
	want := "fd 3 is open (" + pipe + ") and porter run would replace it"
	if err == nil || !strings.Contains(string(out), want) || !strings.Contains(string(out), "notification-fd") || strings.Contains(string(out), "internal error") {
		t.Errorf("porter run with fd 3 open: %v %q, want %q and advice", err, out, want)
	}
	// On fd 9, above 3 (socket) and 4 (broker connection), it is PROG's.
	cmd = d.porterCmd(-1, -1, "run", "--listen", "tcp://127.0.0.1:0", "--", "readlink", "/proc/self/fd/9")
	cmd.ExtraFiles = []*os.File{nil, nil, nil, nil, nil, nil, w}
	out, err = cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != pipe {
		t.Errorf("porter run with fd 9 open: PROG's fd 9: %v %q, want %s", err, out, pipe)
	}
}

// fullBacklog returns the path of a SOCK_SEQPACKET listener that never
// accepts and whose backlog is full, so a blocking connect(2) to it waits.
func fullBacklog(t *testing.T) string {
	t.Helper()
	path := testutil.SharedDir(t) + "/full.sock"
	lfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(lfd) })
	if err := unix.Bind(lfd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(lfd, 0); err != nil {
		t.Fatal(err)
	}
	// Fill the backlog: connect without blocking until the kernel says
	// EAGAIN; nobody ever accepts.
	for i := 0; ; i++ {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
		if err == unix.EAGAIN {
			unix.Close(fd)
			return path
		}
		if err != nil || i > 100 {
			unix.Close(fd)
			t.Fatalf("filling the backlog: %v after %d connections", err, i)
		}
		t.Cleanup(func() { unix.Close(fd) })
	}
}

// stoppedUp starts porter up and stops it with SIGSTOP: it accepts
// connections (the kernel does) but answers nothing. It goes on at the
// end of the test, before it is stopped for good.
func stoppedUp(t *testing.T) *daemon {
	t.Helper()
	d := up(t, "")
	d.cmd.Process.Signal(syscall.SIGSTOP)
	t.Cleanup(func() { d.cmd.Process.Signal(syscall.SIGCONT) })
	waitFor(t, "porter up to stop", func() bool {
		return strings.HasPrefix(procStatus(t, d.cmd.Process.Pid, "State"), "T")
	})
	return d
}

// porterBounded runs `porter args...` and returns its stderr and exit
// error; a porter still running after 30s (the bug: a wait without end)
// is killed and fails t.
func porterBounded(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(binDir+"/porter", args...)
	stderr := newSyncBuffer()
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return stderr.String(), err
	case <-time.After(30 * time.Second): // a bound for a hang, not a timing assertion
		cmd.Process.Kill()
		<-done
		t.Fatalf("porter %s still waits after 30s", strings.Join(args, " "))
		return "", nil
	}
}

// TestRunTimeout: porter run does not wait forever for a broker that
// does not accept (a listener whose backlog is full) or does not answer
// (a stopped porter up): it gives up after --timeout and says what it
// waited for.
func TestRunTimeout(t *testing.T) {
	testutil.CheckLeaks(t)
	run := func(sock string) (string, error) {
		return porterBounded(t, "run", "--timeout", "300ms", "--socket", sock, "--listen", "tcp://127.0.0.1:0", "--", "true")
	}
	out, err := run(fullBacklog(t))
	if err == nil || !strings.Contains(out, "did not accept the connection within 300ms") {
		t.Errorf("porter run, full backlog: %v %q", err, out)
	}
	d := stoppedUp(t)
	out, err = run(d.sock)
	if err == nil || !strings.Contains(out, "did not answer within 300ms") {
		t.Errorf("porter run, stopped broker: %v %q", err, out)
	}
}

// TestLsReleaseTimeout: porter ls and porter release, like porter run,
// give up after --timeout on a broker that does not accept or does not
// answer, and say which; they used to wait forever.
func TestLsReleaseTimeout(t *testing.T) {
	testutil.CheckLeaks(t)
	full := fullBacklog(t)
	d := stoppedUp(t)
	tok := strings.Repeat("ab", 16)
	for _, c := range []struct {
		sock, want string
	}{
		{full, "did not accept the connection within 300ms"},
		{d.sock, "did not answer within 300ms"},
	} {
		for _, args := range [][]string{{"ls"}, {"ls", "--json"}, {"release", tok}} {
			args = append([]string{args[0], "--timeout", "300ms", "--socket", c.sock}, args[1:]...)
			out, err := porterBounded(t, args...)
			if err == nil || !strings.Contains(out, c.want) || !strings.Contains(out, c.sock) {
				t.Errorf("porter %s: %v %q, want an error saying it %s", strings.Join(args, " "), err, out, c.want)
			}
		}
	}
}

// TestRunUserManySockets: looking the user up starts Go's netpoller,
// whose epoll fd must not land where the sockets go (it did with three
// sockets: "fd 6 is open (anon_inode:[eventpoll])").
func TestRunUserManySockets(t *testing.T) {
	testutil.CheckLeaks(t)
	d := up(t, "")
	args := []string{"run", "--user", "nobody"}
	for i := 0; i < 5; i++ {
		args = append(args, "--listen", fmt.Sprintf("udp://127.0.0.1:%d", freePort(t)))
	}
	args = append(args, "--", "sh", "-c", `test "$LISTEN_FDS" = 5 && test "$(id -u)" = "$(id -u nobody)"`)
	out, err := d.porterCmd(-1, -1, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("porter run --user nobody with 5 sockets: %v\n%s", err, out)
	}
}
