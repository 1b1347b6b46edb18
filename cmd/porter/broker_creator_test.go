package main

import (
	"errors"
	"fmt"
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

// creatorPID returns the pid of d's porter-creator, its only child.
func creatorPID(t *testing.T, d *daemon) int {
	t.Helper()
	return testutil.OnlyChild(t, d.cmd.Process.Pid)
}

// waitExit waits up to 10s for d to exit by itself and returns its status.
func waitExit(t *testing.T, d *daemon) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("waiting for porter up: %v", err)
		}
		return d.cmd.ProcessState.ExitCode()
	case <-time.After(10 * time.Second):
		t.Fatal("porter up is still running 10s after its creator died")
		return -1
	}
}

// TestCreatorLossKeepsServing: by default, kill -9 of the creator leaves
// porter up running; a socket it has cached is still handed out, a new
// one is refused with a message that says to restart porter up, and
// porter ls reports the loss.
func TestCreatorLossKeepsServing(t *testing.T) {
	testutil.CheckLeaks(t)
	d := up(t, "")
	port := freePort(t)
	cached := fmt.Sprintf("tcp://127.0.0.1:%d", port)
	startRun(t, d, -1, -1, "--listen", cached, "--app", "web", "--", "sleep", "60")
	if err := syscall.Kill(creatorPID(t, d), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "porter ls to report the creator gone", func() bool { return d.ls(t).CreatorGone })

	out, err := d.porterCmd(-1, -1, "run", "--listen", cached, "--app", "web", "--", "/bin/sh", "-c", "echo got $LISTEN_FDS").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "got 1" {
		t.Errorf("cached socket after the creator died: %v %q, want it handed out", err, out)
	}
	fresh := fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
	out, err = d.porterCmd(-1, -1, "run", "--listen", fresh, "--", "true").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "creator gone") || !strings.Contains(string(out), "Restart porter up") {
		t.Errorf("new socket after the creator died: %v %q, want a creator-gone refusal saying to restart porter up", err, out)
	}
	text, err := d.porterCmd(-1, -1, "ls").Output()
	if err != nil || !strings.Contains(string(text), "the socket creator has exited") {
		t.Errorf("porter ls: %v %q, want a warning about the creator", err, text)
	}
	if d.cmd.ProcessState != nil {
		t.Fatalf("porter up exited: %v", d.cmd.ProcessState)
	}
	if !strings.Contains(d.stderr.String(), "SOCKET CREATOR GONE") {
		t.Errorf("porter up did not log the creator's loss loudly:\n%s", d.stderr.String())
	}
}

// TestExitOnCreatorLoss: with --exit-on-creator-loss, kill -9 of the
// creator makes porter up exit with status 3 (for a service manager to
// restart it). A holder from before keeps its socket, but the restarted
// broker does not know it: a request for that address gets EADDRINUSE
// until the old holder exits. docs/broker.md says so.
func TestExitOnCreatorLoss(t *testing.T) {
	testutil.CheckLeaks(t)
	d := up(t, "", "--exit-on-creator-loss")
	port := freePort(t)
	url := fmt.Sprintf("tcp://127.0.0.1:%d", port)
	old := startRun(t, d, -1, -1, "--listen", url, "--app", "web", "--", "sleep", "60")
	if err := syscall.Kill(creatorPID(t, d), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code := waitExit(t, d); code != 3 {
		t.Fatalf("porter up exited with %d after its creator died, want 3\n%s", code, d.stderr.String())
	}
	if !strings.Contains(d.stderr.String(), "--exit-on-creator-loss") {
		t.Errorf("porter up's log does not say why it exited:\n%s", d.stderr.String())
	}

	d2 := up(t, d.dir, "--exit-on-creator-loss")
	out, err := d2.porterCmd(-1, -1, "run", "--listen", url, "--app", "web", "--", "true").CombinedOutput()
	if err == nil || strings.Count(string(out), "EADDRINUSE") != 1 {
		t.Errorf("after the restart, while the old holder lives: %v %q, want EADDRINUSE (named once)", err, out)
	}
	old.Process.Kill()
	old.Wait()
	out, err = d2.porterCmd(-1, -1, "run", "--listen", url, "--app", "web", "--", "/bin/sh", "-c", "echo got $LISTEN_FDS").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "got 1" {
		t.Errorf("after the restart and the old holder's exit: %v %q, want the socket", err, out)
	}
}

// stopCreator stops d's creator with SIGSTOP and waits until it is.
func stopCreator(t *testing.T, d *daemon) int {
	t.Helper()
	cpid := creatorPID(t, d)
	if err := syscall.Kill(cpid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the creator to stop", func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cpid))
		if err != nil {
			return false
		}
		// pid (comm) STATE ...: comm may hold spaces, so look after ')'.
		_, rest, _ := strings.Cut(string(b), ") ")
		return strings.HasPrefix(rest, "T")
	})
	return cpid
}

// TestCreatorTimeout: a stopped creator does not stall new sockets for
// ever: after --creator-timeout the request gets CREATOR_GONE with a text
// that names the timeout, the creator is killed, and a cached socket is
// still handed out; with --exit-on-creator-loss porter up exits 3.
func TestCreatorTimeout(t *testing.T) {
	testutil.CheckLeaks(t)
	t.Run("keep-serving", func(t *testing.T) {
		d := up(t, "", "--creator-timeout", "300ms")
		cached := fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
		startRun(t, d, -1, -1, "--listen", cached, "--app", "web", "--", "sleep", "60")
		stopCreator(t, d)
		fresh := fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
		out, err := porterBounded(t, "run", "--socket", d.sock, "--timeout", "0", "--listen", fresh, "--", "true")
		if err == nil || !strings.Contains(out, "creator gone") || !strings.Contains(out, "did not answer within 300ms") {
			t.Errorf("new socket with the creator stopped: %v %q, want CREATOR_GONE naming the 300ms timeout", err, out)
		}
		waitFor(t, "porter ls to report the creator gone", func() bool { return d.ls(t).CreatorGone })
		out2, err := d.porterCmd(-1, -1, "run", "--listen", cached, "--app", "web", "--", "/bin/sh", "-c", "echo got $LISTEN_FDS").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out2)) != "got 1" {
			t.Errorf("cached socket after the creator timed out: %v %q, want it handed out", err, out2)
		}
	})
	t.Run("exit-on-creator-loss", func(t *testing.T) {
		d := up(t, "", "--creator-timeout", "300ms", "--exit-on-creator-loss")
		stopCreator(t, d)
		fresh := fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
		out, err := porterBounded(t, "run", "--socket", d.sock, "--timeout", "0", "--listen", fresh, "--", "true")
		if err == nil || !strings.Contains(out, "did not answer within 300ms") {
			t.Errorf("new socket with the creator stopped: %v %q, want an error naming the 300ms timeout", err, out)
		}
		if code := waitExit(t, d); code != 3 {
			t.Fatalf("porter up exited with %d after its creator timed out, want 3\n%s", code, d.stderr.String())
		}
	})
}

// TestUpAsNormalUser: porter up started by nobody runs as nobody, puts its
// socket in $XDG_RUNTIME_DIR/porter where clients find it without
// PORTER_SOCKET, and its creator (nobody too, no capabilities) gets
// EACCES for port 80 even where the rules allow it, while a high port
// works.
func TestUpAsNormalUser(t *testing.T) {
	testutil.CheckLeaks(t)
	testutil.RequireRoot(t) // to become nobody
	uid, gid := testutil.Nobody(t)
	xdg, err := os.MkdirTemp("", "porter-xdg-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(xdg)
	if err := os.Chown(xdg, uid, gid); err != nil {
		t.Fatal(err)
	}
	os.Chmod(xdg, 0o700)
	rules := filepath.Join(xdg, "rules")
	if err := os.WriteFile(rules, []byte("allow uid=nobody proto=tcp port=80\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=/", "XDG_RUNTIME_DIR=" + xdg,
		"PORTER_CREATOR=" + filepath.Join(binDir, "porter-creator")}
	asNobody := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}

	d := &daemon{dir: filepath.Join(xdg, "porter"), stderr: newSyncBuffer()}
	d.sock = filepath.Join(d.dir, "porter.sock")
	d.cmd = exec.Command(filepath.Join(binDir, "porter"), "up", "--rules", rules)
	d.cmd.Env, d.cmd.SysProcAttr, d.cmd.Dir, d.cmd.Stderr = env, asNobody, "/", d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		d.stop(t)
		if t.Failed() {
			t.Logf("porter up log:\n%s", d.stderr.String())
		}
	}()
	waitFor(t, "porter up to serve", func() bool { return strings.Contains(d.stderr.String(), upServing) })
	if _, err := os.Stat(d.sock); err != nil {
		t.Fatalf("control socket not in $XDG_RUNTIME_DIR/porter: %v", err)
	}
	want := strings.TrimSpace(strings.Repeat(strconv.Itoa(uid)+" ", 4))
	if got := procStatus(t, d.cmd.Process.Pid, "Uid"); got != want {
		t.Errorf("porter up Uid: %s, want %s", got, want)
	}
	cpid := creatorPID(t, d)
	if got := procStatus(t, cpid, "Uid"); got != want {
		t.Errorf("creator Uid: %s, want %s", got, want)
	}
	if got := procStatus(t, cpid, "CapEff"); got != "0000000000000000" {
		t.Errorf("creator CapEff: %s, want none", got)
	}

	run := func(url string) (string, error) {
		cmd := exec.Command(filepath.Join(binDir, "porter"), "run", "--listen", url, "--", "/bin/sh", "-c", "echo got $LISTEN_FDS")
		cmd.Env, cmd.SysProcAttr, cmd.Dir = env, asNobody, "/"
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run("tcp://127.0.0.1:80"); err == nil || !strings.Contains(out, "EACCES") {
		t.Errorf("port 80 from an unprivileged creator: %v %q, want EACCES", err, out)
	}
	if out, err := run(fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))); err != nil || strings.TrimSpace(out) != "got 1" {
		t.Errorf("high port, socket found through XDG_RUNTIME_DIR: %v %q", err, out)
	}
}
