package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/porter-ipc/porter/internal/testutil"
)

// checkThreads fails t unless every thread of pid shows want[field].
func checkThreads(t *testing.T, who string, pid int, want map[string]string) {
	t.Helper()
	for field, w := range want {
		if got := testutil.ThreadStatus(t, pid, field); len(got) != 1 || got[0] != w {
			t.Errorf("%s %s on its threads: %q, want %q on every one", who, field, got, w)
		}
	}
}

func ids(id int) string { s := strconv.Itoa(id); return strings.Join([]string{s, s, s, s}, " ") }

// TestUpLockdown: as root, porter up ends as USER with no new privileges
// and an empty bounding set, and its creator (as USER, or as root with
// --creator-as-root) with no new privileges, a seccomp filter, and
// CAP_NET_BIND_SERVICE alone in its bounding, permitted and effective
// sets, on every thread.
func TestUpLockdown(t *testing.T) {
	uid, _ := testutil.Nobody(t)
	for _, asRoot := range []bool{false, true} {
		t.Run(fmt.Sprintf("creator-as-root=%v", asRoot), func(t *testing.T) {
			args := []string{"--user", "nobody"}
			creatorUID := uid
			if asRoot {
				args, creatorUID = append(args, "--creator-as-root"), 0
			}
			d := up(t, "", args...)
			checkThreads(t, "porter up", d.cmd.Process.Pid, map[string]string{
				"Uid":        ids(uid),
				"NoNewPrivs": "1",
				"CapBnd":     "0000000000000000",
				"CapPrm":     "0000000000000000",
				"CapEff":     "0000000000000000",
			})
			cpid := creatorPID(t, d)
			waitFor(t, "the creator's lockdown", func() bool { return procStatus(t, cpid, "Seccomp") == "2" })
			checkThreads(t, "porter-creator", cpid, map[string]string{
				"Uid":        ids(creatorUID),
				"NoNewPrivs": "1",
				"Seccomp":    "2",
				"CapBnd":     "0000000000000400",
				"CapPrm":     "0000000000000400",
				"CapEff":     "0000000000000400",
				"CapAmb":     "0000000000000000",
			})
		})
	}
}

// TestUpRefusesRoot: porter up does not keep root: a --user that is root
// is refused before anything starts.
func TestUpRefusesRoot(t *testing.T) {
	testutil.RequireRoot(t)
	for _, u := range []string{"root", "0"} {
		// A porter up that kept root would serve: the context ends it.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(binDir, "porter"), "up", "--dir", testutil.SharedDir(t), "--user", u)
		cmd.Env = append(os.Environ(), "PORTER_CREATOR="+filepath.Join(binDir, "porter-creator"))
		out, err := cmd.CombinedOutput()
		if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), "does not keep root") {
			t.Errorf("porter up --user %s: %v %q, want exit 1 saying it does not keep root", u, err, out)
		}
	}
}

// TestUpDefaultUser: without --user, porter up runs as a dedicated user
// porter when the system has one, else as nobody, and logs which. The
// test makes the user porter with useradd and removes it again (a user
// porter that was there before is used and left).
func TestUpDefaultUser(t *testing.T) {
	testutil.RequireRoot(t)
	_, err := user.Lookup("porter")
	existed := err == nil
	if !existed {
		nobody, _ := testutil.Nobody(t)
		d := up(t, "")
		if !strings.Contains(d.stderr.String(), "user=nobody") {
			t.Errorf("no user porter: the log does not say nobody:\n%s", d.stderr.String())
		}
		checkThreads(t, "porter up", d.cmd.Process.Pid, map[string]string{"Uid": ids(nobody)})
		d.stop(t)

		useradd := testutil.RequireProgram(t, "useradd")
		userdel := testutil.RequireProgram(t, "userdel")
		if out, err := exec.Command(useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "porter").CombinedOutput(); err != nil {
			t.Fatalf("useradd porter: %v %s", err, out)
		}
		t.Cleanup(func() { // after the daemon's cleanup: cleanups run last first
			if out, err := exec.Command(userdel, "porter").CombinedOutput(); err != nil {
				t.Errorf("userdel porter: %v %s", err, out)
			}
		})
	}
	u, err := user.Lookup("porter")
	if err != nil {
		t.Fatal(err)
	}
	puid, _ := strconv.Atoi(u.Uid)
	d := up(t, "")
	if !strings.Contains(d.stderr.String(), "user=porter") || !strings.Contains(d.stderr.String(), "default=true") {
		t.Errorf("the log does not say porter picked the user porter:\n%s", d.stderr.String())
	}
	checkThreads(t, "porter up", d.cmd.Process.Pid, map[string]string{"Uid": ids(puid), "NoNewPrivs": "1", "CapBnd": "0000000000000000"})
	checkThreads(t, "porter-creator", creatorPID(t, d), map[string]string{"Uid": ids(puid)})
}

// TestIPCServerLockdown: porter ipcserver that drops to another uid (-u
// and -g, or -U) ends with no new privileges and an empty bounding set,
// and so do the programs it runs; one that stays root (-G alone) keeps
// root's powers for its programs, as s6-ipcserver.
func TestIPCServerLockdown(t *testing.T) {
	testutil.RequireRoot(t)
	uid, gid := testutil.Nobody(t)
	u, g := strconv.Itoa(uid), strconv.Itoa(gid)
	const prog = `grep -E '^(Uid|NoNewPrivs|CapBnd):' /proc/self/status`
	full := testutil.ThreadStatus(t, os.Getpid(), "CapBnd")[0]
	dir := ipcDir(t)
	for i, c := range []struct {
		argv       []string
		uid        int
		nnp, bound string
	}{
		{[]string{"-u", u, "-g", g}, uid, "1", "0000000000000000"},
		{[]string{"-U"}, uid, "1", "0000000000000000"},
		{[]string{"-G", "100"}, 0, "0", full},
	} {
		path := filepath.Join(dir, fmt.Sprintf("%d.sock", i))
		argv := []string{"env", "UID=" + u, "GID=" + g, "GIDLIST=", porterBin(), "ipcserver", "-1"}
		argv = append(append(argv, c.argv...), path, "sh", "-c", prog)
		s := startIPC(t, argv...)
		checkThreads(t, "porter ipcserver", s.cmd.Process.Pid, map[string]string{
			"Uid": ids(c.uid), "NoNewPrivs": c.nnp, "CapBnd": c.bound,
		})
		out := client(t, -1, -1, porterBin(), "ipcclient", path, "sh", "-c", "cat <&6")
		want := fmt.Sprintf("Uid:\t%d\t%d\t%d\t%d\nCapBnd:\t%s\nNoNewPrivs:\t%s\n", c.uid, c.uid, c.uid, c.uid, c.bound, c.nnp)
		if lines := strings.Join(slices.DeleteFunc(strings.SplitAfter(out, "\n"), func(l string) bool { return l == "" }), ""); lines != want {
			t.Errorf("%q: PROG's status:\n%s\nwant\n%s", c.argv, out, want)
		}
	}
}
