// Package testutil holds what porter's tests share: fd-leak checks against
// /proc/self/fd, loud requirements (root, a peer program), and running the
// test binary again as a child, possibly as another user.
package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// OpenFDs returns the process's open fds with what each points to.
func OpenFDs() map[int]string {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		panic(err)
	}
	m := make(map[int]string, len(ents))
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // the fd ReadDir itself used, gone by now
		}
		m[n] = target
	}
	return m
}

// CheckLeaks records the open fds now and, when the test ends, fails it if
// fds were opened and not closed. Goroutines that close fds late (netpoller
// teardown, finalizers) get a short grace period, polled, not slept.
func CheckLeaks(t testing.TB) {
	t.Helper()
	// The runtime opens its netpoller's fds (epoll, eventfd) on first use
	// and keeps them: make sure that has happened before counting.
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
	before := OpenFDs()
	t.Cleanup(func() {
		t.Helper()
		var extra []string
		deadline := time.Now().Add(2 * time.Second)
		for {
			extra = extra[:0]
			for fd, target := range OpenFDs() {
				if old, ok := before[fd]; !ok || old != target {
					extra = append(extra, fmt.Sprintf("%d -> %s", fd, target))
				}
			}
			if len(extra) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if len(extra) > 0 {
			sort.Strings(extra)
			t.Errorf("fd leak: %d fds opened and not closed:\n  %s", len(extra), strings.Join(extra, "\n  "))
		}
	})
}

// RequireRoot fails (never skips) a test that needs root, saying so.
// Set PORTER_TEST_NONROOT=1 to turn the failure into a loud skip when
// running the suite as a normal user on purpose.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("PORTER_TEST_NONROOT") == "1" {
		t.Skip("NEEDS ROOT: skipped because PORTER_TEST_NONROOT=1; this test did not run")
	}
	t.Fatal("NEEDS ROOT: this test drops privileges to nobody and binds low ports; run the suite as root (set PORTER_TEST_NONROOT=1 to skip it loudly)")
}

// RequireProgram returns the path of a peer program, failing the test
// loudly when it is missing (CI installs it; see .ci/run).
func RequireProgram(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("NEEDS PEER: %s is not installed (CI installs it; see .ci/run): %v", name, err)
	}
	return p
}

// Nobody returns the uid and gid of the user nobody.
func Nobody(t testing.TB) (uid, gid int) {
	t.Helper()
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("look up nobody: %v", err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid
}

// WorldExecutable returns a copy of the running test binary that any user
// may execute: go test's own build directory is private to its owner, so
// a child dropped to nobody could not exec it there.
func WorldExecutable(t testing.TB) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "porter-test-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, filepath.Base(self))
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

// ChildEnv is the variable that tells a re-executed test binary which
// helper to run instead of the tests.
const ChildEnv = "PORTER_TEST_CHILD"

// registered holds the helpers that RegisterChild added.
var registered = map[string]func() int{}

// RegisterChild adds a helper that RunChildren runs as name, besides the
// ones TestMain passes it. Call it from an init function, so that a test
// file brings its own child helpers without editing TestMain.
func RegisterChild(name string, h func() int) {
	if _, dup := registered[name]; dup {
		panic("testutil: child helper " + name + " registered twice")
	}
	registered[name] = h
}

// RunChildren is called from TestMain: when the binary was started by
// Child, it runs the named helper (from helpers, else one RegisterChild
// added) and exits with its status.
func RunChildren(helpers map[string]func() int) {
	name := os.Getenv(ChildEnv)
	if name == "" {
		return
	}
	h, ok := helpers[name]
	if !ok {
		h, ok = registered[name]
	}
	if !ok {
		fmt.Fprintf(os.Stderr, "testutil: no child helper %q\n", name)
		os.Exit(100)
	}
	os.Exit(h())
}

// Child returns a command that runs the test binary as the helper name.
// With asUID >= 0 (root only) the child runs as that uid and gid, from a
// world-executable copy of the binary. extra files become fds 3, 4, ...
func Child(t testing.TB, name string, asUID, asGID int, extra ...*os.File) *exec.Cmd {
	t.Helper()
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if asUID >= 0 {
		bin = WorldExecutable(t)
	}
	return ChildOf(bin, name, asUID, asGID, extra...)
}

// ChildOf is Child with the binary given: a test that starts many
// children as another user makes one WorldExecutable copy and passes it
// here, instead of copying the binary for each child.
func ChildOf(bin, name string, asUID, asGID int, extra ...*os.File) *exec.Cmd {
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), ChildEnv+"="+name)
	cmd.Stderr = os.Stderr
	cmd.ExtraFiles = extra
	if asUID >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(asUID), Gid: uint32(asGID)}}
		cmd.Dir = "/"
	}
	return cmd
}

// InheritedFDs lists the fds above 2 that this process holds without
// close-on-exec: whatever started the tests left them open, and every
// child inherits them whoever spawns it. Tests that check a child's fds
// allow these.
func InheritedFDs() []int {
	var out []int
	for fd := range OpenFDs() {
		if fd <= 2 {
			continue
		}
		if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil && fl&unix.FD_CLOEXEC == 0 {
			out = append(out, fd)
		}
	}
	sort.Ints(out)
	return out
}
