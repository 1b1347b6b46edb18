package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// upCmd returns `porter up --dir dir args...` with porter-creator from
// this test run, run as uid/gid when uid >= 0; its stderr goes to a
// buffer.
func upCmd(t *testing.T, dir string, uid, gid int, args ...string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "porter"), append([]string{"up", "--dir", dir}, args...)...)
	stderr := newSyncBuffer()
	cmd.Stderr = stderr
	cmd.Env = append(os.Environ(), "PORTER_CREATOR="+filepath.Join(binDir, "porter-creator"))
	if uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		cmd.Dir = "/"
	}
	return cmd, stderr
}

// runUp runs a porter up that is expected to fail at start-up: if it
// serves instead, it is stopped and the test fails.
func runUp(t *testing.T, cmd *exec.Cmd, stderr *syncBuffer) error {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	exited := false
	waitFor(t, "porter up to exit or serve", func() bool {
		select {
		case err = <-done:
			exited = true
			return true
		default:
			return strings.Contains(stderr.String(), upServing)
		}
	})
	if !exited {
		cmd.Process.Signal(syscall.SIGTERM)
		<-done
		t.Errorf("porter up started serving; it said:\n%s", stderr)
		return nil
	}
	return err
}

// TestUpRefusesNonSocket: a file that is not a socket where porter up's
// control socket goes is named in the error and left alone (connect(2)
// to it is ECONNREFUSED too, which once made porter up delete it).
func TestUpRefusesNonSocket(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		kind string
		make func(path string) error
	}{
		{"a regular file", func(p string) error { return os.WriteFile(p, []byte("precious"), 0o644) }},
		{"a directory", func(p string) error { return os.Mkdir(p, 0o755) }},
	} {
		dir := testutil.SharedDir(t)
		sock := filepath.Join(dir, "porter.sock")
		if err := tc.make(sock); err != nil {
			t.Fatal(err)
		}
		cmd, stderr := upCmd(t, dir, -1, -1)
		err := runUp(t, cmd, stderr)
		want := sock + " is " + tc.kind + ", not a socket; porter will not remove it"
		if err == nil || !strings.Contains(stderr.String(), want) {
			t.Errorf("porter up over %s: %v %q, want an error with %q", tc.kind, err, stderr, want)
		}
		if st, err := os.Lstat(sock); err != nil || st.Mode()&os.ModeSocket != 0 {
			t.Fatalf("%s at the socket path was removed or replaced: %v", tc.kind, err)
		}
	}
}

// TestUpRemovesSocketAtExit: porter up as root makes its directory owned
// by the user it drops to, so after SIGTERM (as that user) it can remove
// porter.sock; a second start finds nothing in the way.
func TestUpRemovesSocketAtExit(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := filepath.Join(testutil.SharedDir(t), "run", "porter")
	d := up(t, dir)
	uid, gid := testutil.Nobody(t)
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil || int(st.Uid) != uid || int(st.Gid) != gid || st.Mode&0o777 != 0o755 {
		t.Errorf("the directory porter up made: %v uid %d gid %d mode %#o, want nobody's, 0755", err, st.Uid, st.Gid, st.Mode&0o777)
	}
	d.stop(t)
	if _, err := os.Lstat(d.sock); !os.IsNotExist(err) {
		t.Fatalf("after SIGTERM porter.sock is still there (%v); porter up said:\n%s", err, d.stderr)
	}
	d = up(t, dir) // again, in the directory it now owns
	d.stop(t)
	if _, err := os.Lstat(d.sock); !os.IsNotExist(err) {
		t.Fatalf("after the second SIGTERM porter.sock is still there (%v); porter up said:\n%s", err, d.stderr)
	}
}

// TestUpStaleSocketNotOurs: porter up as nobody, where root's stale
// control socket sits in root's directory, says whose socket it is and
// what to do, not "address already in use"; porter up as root then
// replaces it.
func TestUpStaleSocketNotOurs(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := testutil.SharedDir(t) // root's, 0755
	// What a root broker killed with kill -9 leaves behind (porter up no
	// longer stays root, so the test makes the socket itself).
	sock := filepath.Join(dir, "porter.sock")
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	if err := os.Chmod(sock, 0o666); err != nil { // as porter up's --socket-mode default
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("root's stale porter.sock: %v", err)
	}
	uid, gid := testutil.Nobody(t)
	cmd, stderr := upCmd(t, dir, uid, gid)
	err = runUp(t, cmd, stderr)
	want := fmt.Sprintf("a stale socket (no server listens on it) is at %s, owned by uid 0, which uid %d cannot replace: remove it, or run as uid 0 or root", sock, uid)
	if err == nil || !strings.Contains(stderr.String(), want) || strings.Contains(stderr.String(), "address already in use") {
		t.Fatalf("porter up as nobody over root's stale socket: %v %q, want %q", err, stderr, want)
	}
	up(t, dir).stop(t)
}

// TestUpCreatorInheritsNoFDs: an fd that porter up inherited without
// close-on-exec does not reach the privileged creator.
func TestUpCreatorInheritsNoFDs(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CheckLeaks(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	pipe, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", testutil.FD(t, w)))
	if err != nil {
		t.Fatal(err)
	}
	dir := testutil.SharedDir(t)
	cmd, stderr := upCmd(t, dir, -1, -1)
	cmd.ExtraFiles = []*os.File{r, w} // fds 3 and 4 of porter up
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{cmd: cmd, dir: dir, sock: filepath.Join(dir, "porter.sock"), stderr: stderr}
	defer d.stop(t)
	waitFor(t, "porter up to serve", func() bool { return strings.Contains(stderr.String(), upServing) })
	if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/4", cmd.Process.Pid)); l != pipe {
		t.Fatalf("porter up's fd 4 is %q, want the pipe %s", l, pipe)
	}
	cpid := testutil.OnlyChild(t, cmd.Process.Pid)
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", cpid))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", cpid, e.Name())); l == pipe {
			t.Errorf("the creator has porter up's inherited pipe as its fd %s", e.Name())
		}
	}
}

// TestUpShutdownHangs: when the broker cannot finish stopping within
// porter up's 10 seconds (a request waits for a stopped creator), porter
// up says so and exits 1, instead of dropping Shutdown's error and
// exiting 0.
func TestUpShutdownHangs(t *testing.T) {
	testutil.CheckLeaks(t)
	d := up(t, "", "--creator-timeout", "5m")
	cpid := stopCreator(t, d)
	pidfd, err := unix.PidfdOpen(cpid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	defer unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
	// The creator's end of its socket pair, to see the request arrive.
	cfd, err := unix.PidfdGetfd(pidfd, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	closeCFD := sync.OnceFunc(func() { unix.Close(cfd) })
	defer closeCFD()

	run := exec.Command(filepath.Join(binDir, "porter"), "run", "--socket", d.sock, "--timeout", "0",
		"--listen", fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t)), "--", "true")
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { run.Process.Kill(); run.Wait() }()
	waitFor(t, "the request to reach the stopped creator", func() bool {
		n, err := unix.IoctlGetInt(cfd, unix.SIOCINQ)
		return err == nil && n > 0
	})

	// porter up gives the broker 10 seconds, then says it did not stop
	// cleanly; it exits once the request it still waits for ends, here
	// when the creator is killed. (cmd.Wait would also wait for the
	// stopped creator to close its copy of porter up's stderr: wait for
	// porter up's exit on a pidfd.)
	upfd, err := unix.PidfdOpen(d.cmd.Process.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(upfd)
	d.cmd.Process.Signal(syscall.SIGTERM)
	for i := 0; !strings.Contains(d.stderr.String(), "did not stop cleanly"); i++ {
		if i == 1200 { // a bound for a hang (a minute), not a timing assertion
			t.Fatalf("porter up did not report its unclean stop a minute after SIGTERM:\n%s", d.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	closeCFD() // else the socket outlives the creator
	if err := unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0); err != nil {
		t.Fatalf("killing the creator: %v", err)
	}
	fds := []unix.PollFd{{Fd: int32(upfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 60_000) // a bound for a hang
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			t.Fatalf("porter up still runs a minute after its creator was killed (poll: %v)", err)
		}
		break
	}
	d.cmd.Wait()
	if code := d.cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(d.stderr.String(), "did not stop cleanly") {
		t.Errorf("porter up exited %d, want 1 with a line saying it did not stop cleanly:\n%s", code, d.stderr.String())
	}
}

// TestUpInterruptedGroup: Ctrl-C in a terminal sends SIGINT to the whole
// foreground process group. The creator is in a group of its own, so it
// is stopped by porter up rather than killed by the signal (which raced
// porter up's own stop and could log "SOCKET CREATOR GONE" on the way
// out), and porter up stops cleanly.
func TestUpInterruptedGroup(t *testing.T) {
	testutil.CheckLeaks(t)
	cmd, stderr := upCmd(t, testutil.SharedDir(t), -1, -1)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // as a shell's foreground job
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	waitFor(t, "porter up to serve", func() bool { return strings.Contains(stderr.String(), upServing) })
	cpid := testutil.OnlyChild(t, cmd.Process.Pid)
	waitFor(t, "the creator's lockdown", func() bool { return procStatus(t, cpid, "Seccomp") == "2" })
	if pg, err := syscall.Getpgid(cpid); err != nil || pg == cmd.Process.Pid {
		t.Fatalf("the creator's process group: %d %v; want one of its own, not porter up's %d", pg, err, cmd.Process.Pid)
	}
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil || strings.Contains(stderr.String(), "CREATOR GONE") {
			t.Fatalf("porter up after SIGINT to its process group: %v\n%s", err, stderr)
		}
	case <-time.After(30 * time.Second): // a guard for a hang, not a timing
		cmd.Process.Kill()
		<-done
		t.Fatalf("porter up still runs 30s after SIGINT\n%s", stderr)
	}
}
