package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/porter-ipc/porter/internal/lockdown"
	"github.com/porter-ipc/porter/internal/lockdown/forbidden"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// probeBinary builds porter-creator with the creatortest tag (and without
// cgo, as it ships) where nobody may run it.
func probeBinary(t *testing.T) string {
	t.Helper()
	dir := testutil.SharedDir(t)
	bin := filepath.Join(dir, "porter-creator")
	cmd := exec.Command("go", "build", "-tags", "creatortest", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build -tags creatortest: %v\n%s", err, out)
	}
	return bin
}

// probeRun runs the probe build as porter up runs the creator (as nobody
// with lockdown.CreatorProcAttr), on a socketpair as stdin and stdout.
func probeRun(t *testing.T, bin, name string) (*os.ProcessState, string) {
	t.Helper()
	uid, gid := testutil.Nobody(t)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "ours"), os.NewFile(uintptr(fds[1]), "theirs")
	defer ours.Close()
	var stderr bytes.Buffer
	cmd := exec.Command(bin)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = theirs, theirs, &stderr
	cmd.Env = append(os.Environ(), "PORTER_CREATOR_PROBE="+name)
	cmd.SysProcAttr = lockdown.CreatorProcAttr(uid, gid)
	cmd.Dir = "/"
	err = cmd.Run()
	theirs.Close()
	if cmd.ProcessState == nil {
		t.Fatalf("probe %s: %v", name, err)
	}
	return cmd.ProcessState, stderr.String()
}

// TestProbeForbidden: the real creator, locked down as it locks itself
// down in production, is killed by SIGSYS when it opens a file, execs,
// ptraces, makes a socket of another kind (AF_UNIX, AF_NETLINK, SOCK_RAW,
// AF_PACKET, ICMP) and the rest of internal/lockdown/forbidden.
func TestProbeForbidden(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CheckLeaks(t)
	bin := probeBinary(t)
	st, out := probeRun(t, bin, "report")
	abi, _ := lockdown.ABI()
	if want := "nnp=true bounding=true landlock=" + strconv.Itoa(abi) + " seccomp=true"; !st.Success() || strings.TrimSpace(out) != want {
		t.Errorf("report: %v %q, want %q", st, out, want)
	}
	for _, c := range forbidden.Calls {
		t.Run(c.Name, func(t *testing.T) {
			st, out := probeRun(t, bin, c.Name)
			ws := st.Sys().(syscall.WaitStatus)
			if !ws.Signaled() || ws.Signal() != syscall.SIGSYS {
				t.Errorf("%s: %v, stderr %q; want killed by SIGSYS", c.Name, st, out)
			}
		})
	}
}
