package lockdown

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/porter-ipc/porter/internal/lockdown/forbidden"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// The lockdown runs on every thread through syscall.AllThreadsSyscall,
// which the runtime refuses in a binary that links cgo, as this test
// binary does under -race. The children that lock themselves down are
// therefore this package's tests built again without cgo.
var childBin string

func TestMain(m *testing.M) {
	testutil.RunChildren(map[string]func() int{
		"creator-call":   childCreatorCall,
		"creator-hold":   childCreatorHold,
		"creator-works":  childCreatorWorks,
		"landlock-alone": childLandlockAlone,
		"drop-hold":      childDropHold,
		"setids-hold":    childSetIDsHold,
	})
	dir, err := os.MkdirTemp("", "porter-lockdown-")
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err == nil {
		childBin = filepath.Join(dir, "lockdown.test")
		cmd := exec.Command("go", "test", "-c", "-o", childBin, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		var out []byte
		if out, err = cmd.CombinedOutput(); err != nil {
			err = fmt.Errorf("go test -c without cgo: %v\n%s", err, out)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// child returns a command running helper name from the cgo-free binary,
// as uid/gid when uid >= 0, with the given ambient capabilities.
func child(name string, uid, gid int, ambient ...uintptr) *exec.Cmd {
	cmd := exec.Command(childBin, "-test.run=^$")
	cmd.Env = append(os.Environ(), testutil.ChildEnv+"="+name)
	cmd.Dir = "/"
	if uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Credential:  &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}},
			AmbientCaps: ambient,
		}
	}
	return cmd
}

// asPorterUp is how porter up starts the creator as root: as nobody with
// CAP_NET_BIND_SERVICE and CAP_SETPCAP ambient.
var asPorterUp = []uintptr{unix.CAP_NET_BIND_SERVICE, unix.CAP_SETPCAP}

func childCreatorCall() int {
	name := os.Getenv("LOCKDOWN_CALL")
	if _, err := Creator(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	for _, c := range forbidden.Calls {
		if c.Name == name {
			err := c.Try()
			fmt.Fprintf(os.Stderr, "%s after the lockdown: the process lives on, the call returned %v\n", name, err)
			return 99
		}
	}
	fmt.Fprintf(os.Stderr, "no forbidden call %q\n", name)
	return 100
}

// childCreatorHold locks down, says what it applied on stdout, and waits
// for its stdin to close, so the parent can read its /proc status.
func childCreatorHold() int {
	r, err := Creator()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	fmt.Printf("nnp=%v bounding=%v landlock=%d seccomp=%v\n", r.NoNewPrivs, r.Bounding, r.Landlock, r.Seccomp)
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// childCreatorWorks locks down and then does what the creator and the
// runtime do while serving: the four kinds of socket, bound; collections,
// new threads, preemption, timers and sleeps.
func childCreatorWorks() int {
	if _, err := Creator(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	for _, domain := range []int{unix.AF_INET, unix.AF_INET6} {
		for _, typ := range []int{unix.SOCK_STREAM, unix.SOCK_DGRAM} {
			fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				fmt.Fprintln(os.Stderr, "socket:", err)
				return 1
			}
			var sa unix.Sockaddr = &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
			if domain == unix.AF_INET6 {
				unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
				sa = &unix.SockaddrInet6{Addr: [16]byte{15: 1}}
			}
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			if err := unix.Bind(fd, sa); err != nil {
				fmt.Fprintln(os.Stderr, "bind:", err)
				return 1
			}
			unix.Close(fd)
		}
	}
	// Busy goroutines on more threads than processors: the scheduler
	// starts threads and preempts with SIGURG; garbage and collections;
	// timers through the netpoller.
	var wg sync.WaitGroup
	stop := time.Now().Add(300 * time.Millisecond)
	for i := 0; i < 4*runtime.NumCPU()+4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var keep [][]byte
			for time.Now().Before(stop) {
				keep = append(keep, make([]byte, 4096))
				if len(keep) > 256 {
					keep = nil
					runtime.GC()
				}
			}
			runtime.LockOSThread() // a locked goroutine that ends takes its thread with it
		}()
	}
	t := time.NewTimer(10 * time.Millisecond)
	<-t.C
	time.Sleep(time.Millisecond)
	wg.Wait()
	os.Stderr.WriteString("")
	return 0
}

// childLandlockAlone applies the Landlock step by itself (seccomp would
// kill an open before Landlock could refuse it) and tries to open a file.
func childLandlockAlone() int {
	if err := noNewPrivs(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	if _, err := landlock(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	fd, err := unix.Open("/etc/passwd", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err == nil {
		unix.Close(fd)
	}
	fmt.Println(unix.ErrnoName(errnoOf(err)))
	return 0
}

func errnoOf(err error) unix.Errno {
	var e unix.Errno
	errors.As(err, &e)
	return e
}

func childDropHold() int {
	uid, _ := strconv.Atoi(os.Getenv("DROP_UID"))
	gid, _ := strconv.Atoi(os.Getenv("DROP_GID"))
	if err := Drop(uid, gid, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	fmt.Println("dropped")
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// childSetIDsHold calls SetIDs with $DROP_UID, $DROP_GID and the
// comma-separated $DROP_GROUPS, says "set" or the error, and waits for
// stdin to close.
func childSetIDsHold() int {
	uid, _ := strconv.Atoi(os.Getenv("DROP_UID"))
	gid, _ := strconv.Atoi(os.Getenv("DROP_GID"))
	var groups []int
	for _, g := range strings.Split(os.Getenv("DROP_GROUPS"), ",") {
		n, _ := strconv.Atoi(g)
		groups = append(groups, n)
	}
	if err := SetIDs(uid, gid, groups); err != nil {
		fmt.Printf("error %v; EPERM %v\n", err, errors.Is(err, unix.EPERM))
	} else {
		fmt.Println("set")
	}
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// hold starts cmd, waits for its first line, and returns it with a
// function that lets the child end and checks it exited 0.
func hold(t *testing.T, cmd *exec.Cmd) (string, func()) {
	t.Helper()
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		in.Close()
		cmd.Wait()
		t.Fatalf("child: no line (%v), %v", err, cmd.ProcessState)
	}
	return strings.TrimSpace(line), func() {
		in.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("child: %v", err)
		}
	}
}

// threadStatus returns, for each field, the distinct values that the
// /proc status of pid's threads show.
func threadStatus(t *testing.T, pid int, fields ...string) map[string][]string {
	t.Helper()
	got := map[string][]string{}
	for _, f := range fields {
		got[f] = testutil.ThreadStatus(t, pid, f)
	}
	if n, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid)); len(n) < 2 {
		t.Errorf("pid %d has %d threads; the check is meant for several", pid, len(n))
	}
	return got
}

// checkStatus fails t unless every thread shows want[field].
func checkStatus(t *testing.T, pid int, want map[string]string) {
	t.Helper()
	var fields []string
	for f := range want {
		fields = append(fields, f)
	}
	got := threadStatus(t, pid, fields...)
	for f, w := range want {
		if len(got[f]) != 1 || got[f][0] != w {
			t.Errorf("%s on the threads of %d: %q, want %q on every one", f, pid, got[f], w)
		}
	}
}

// TestCreatorStatus: after Creator every thread shows no new privileges,
// a seccomp filter, and CAP_NET_BIND_SERVICE alone in the bounding,
// permitted and effective sets (none inheritable or ambient): started as
// porter up starts the creator (nobody with CAP_NET_BIND_SERVICE and
// CAP_SETPCAP ambient), and as root with every capability
// (--creator-as-root).
func TestCreatorStatus(t *testing.T) {
	testutil.RequireRoot(t)
	abi, err := ABI()
	if err != nil {
		t.Fatalf("this kernel has no Landlock (%v): the test needs one to prove it is applied", err)
	}
	uid, gid := testutil.Nobody(t)
	for _, c := range []struct {
		name string
		cmd  *exec.Cmd
	}{
		{"nobody+ambient", child("creator-hold", uid, gid, asPorterUp...)},
		{"root", child("creator-hold", -1, -1)},
	} {
		t.Run(c.name, func(t *testing.T) {
			line, end := hold(t, c.cmd)
			defer end()
			if want := fmt.Sprintf("nnp=true bounding=true landlock=%d seccomp=true", abi); line != want {
				t.Errorf("report %q, want %q", line, want)
			}
			checkStatus(t, c.cmd.Process.Pid, map[string]string{
				"NoNewPrivs": "1",
				"Seccomp":    "2",
				"CapBnd":     "0000000000000400",
				"CapPrm":     "0000000000000400",
				"CapEff":     "0000000000000400",
				"CapInh":     "0000000000000000",
				"CapAmb":     "0000000000000000",
			})
		})
	}
}

// TestCreatorUnprivileged: without capabilities (porter up as a normal
// user) Creator applies what it can: no new privileges, Landlock and
// seccomp, and leaves the bounding set.
func TestCreatorUnprivileged(t *testing.T) {
	testutil.RequireRoot(t) // to become nobody
	uid, gid := testutil.Nobody(t)
	cmd := child("creator-hold", uid, gid)
	line, end := hold(t, cmd)
	defer end()
	if !strings.HasPrefix(line, "nnp=true bounding=false landlock=") || strings.Contains(line, "landlock=0") || !strings.HasSuffix(line, "seccomp=true") {
		t.Errorf("report %q, want no new privileges, Landlock and seccomp, no bounding-set drop", line)
	}
	checkStatus(t, cmd.Process.Pid, map[string]string{
		"NoNewPrivs": "1",
		"Seccomp":    "2",
		"CapPrm":     "0000000000000000",
		"CapEff":     "0000000000000000",
	})
}

// TestCreatorForbids: after Creator each forbidden call kills the
// process with SIGSYS: opening a file, exec, ptrace, sockets other than
// TCP/UDP over IPv4/IPv6, new processes, executable memory, signals to
// others.
func TestCreatorForbids(t *testing.T) {
	testutil.RequireRoot(t)
	uid, gid := testutil.Nobody(t)
	for _, c := range forbidden.Calls {
		t.Run(c.Name, func(t *testing.T) {
			cmd := child("creator-call", uid, gid, asPorterUp...)
			cmd.Env = append(cmd.Env, "LOCKDOWN_CALL="+c.Name)
			cmd.Stderr = os.Stderr
			cmd.Run()
			ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
			if !ws.Signaled() || ws.Signal() != syscall.SIGSYS {
				t.Errorf("%s after the lockdown: %v, want killed by SIGSYS", c.Name, cmd.ProcessState)
			}
		})
	}
}

// TestCreatorWorks: after Creator the process still makes and binds the
// four kinds of socket, and the runtime still collects garbage, starts
// and ends threads, preempts and sleeps.
func TestCreatorWorks(t *testing.T) {
	testutil.RequireRoot(t)
	uid, gid := testutil.Nobody(t)
	for _, cmd := range []*exec.Cmd{child("creator-works", uid, gid, asPorterUp...), child("creator-works", -1, -1)} {
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			t.Errorf("locked-down child: %v", err)
		}
	}
}

// TestLandlock: the Landlock step alone refuses to open a file (EACCES),
// where the process could before.
func TestLandlock(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := ABI(); err != nil {
		t.Fatalf("this kernel has no Landlock (%v): the test needs one", err)
	}
	uid, gid := testutil.Nobody(t)
	if fd, err := unix.Open("/etc/passwd", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		t.Fatalf("/etc/passwd must be readable for the test: %v", err)
	} else {
		unix.Close(fd)
	}
	for _, cmd := range []*exec.Cmd{child("landlock-alone", uid, gid), child("landlock-alone", -1, -1)} {
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil || strings.TrimSpace(string(out)) != "EACCES" {
			t.Errorf("open under Landlock: %q %v, want EACCES", out, err)
		}
	}
}

// TestDrop: root dropping to nobody ends, on every thread, as nobody with
// an empty bounding set, no capability and no new privileges.
func TestDrop(t *testing.T) {
	testutil.RequireRoot(t)
	uid, gid := testutil.Nobody(t)
	cmd := child("drop-hold", -1, -1)
	cmd.Env = append(cmd.Env, fmt.Sprintf("DROP_UID=%d", uid), fmt.Sprintf("DROP_GID=%d", gid))
	_, end := hold(t, cmd)
	defer end()
	u, g := strconv.Itoa(uid), strconv.Itoa(gid)
	checkStatus(t, cmd.Process.Pid, map[string]string{
		"Uid":        strings.Join([]string{u, u, u, u}, " "),
		"Gid":        strings.Join([]string{g, g, g, g}, " "),
		"Groups":     "",
		"NoNewPrivs": "1",
		"CapBnd":     "0000000000000000",
		"CapPrm":     "0000000000000000",
		"CapEff":     "0000000000000000",
		"Seccomp":    "0",
	})
}

// TestSetIDs: root changing to nobody with SetIDs ends, on every thread,
// as nobody with the groups it was given and no capability left, but
// with the bounding set and no-new-privileges untouched (what porter run
// --user leaves the program it runs); and a process that may not change
// its ids gets an error that wraps the errno.
func TestSetIDs(t *testing.T) {
	testutil.RequireRoot(t)
	uid, gid := testutil.Nobody(t)
	self, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	var bnd string
	for _, line := range strings.Split(string(self), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			bnd = strings.TrimSpace(v)
		}
	}
	cmd := child("setids-hold", -1, -1)
	cmd.Env = append(cmd.Env, fmt.Sprintf("DROP_UID=%d", uid), fmt.Sprintf("DROP_GID=%d", gid), fmt.Sprintf("DROP_GROUPS=%d,4242", gid))
	line, end := hold(t, cmd)
	defer end()
	if line != "set" {
		t.Fatalf("SetIDs as root: %s", line)
	}
	u, g := strconv.Itoa(uid), strconv.Itoa(gid)
	checkStatus(t, cmd.Process.Pid, map[string]string{
		"Uid":        strings.Join([]string{u, u, u, u}, " "),
		"Gid":        strings.Join([]string{g, g, g, g}, " "),
		"Groups":     sortedGroups(gid, 4242),
		"NoNewPrivs": "0",
		"CapBnd":     bnd,
		"CapPrm":     "0000000000000000",
		"CapEff":     "0000000000000000",
	})

	cmd = child("setids-hold", uid, gid)
	cmd.Env = append(cmd.Env, "DROP_UID=0", "DROP_GID=0", "DROP_GROUPS=0")
	line, end2 := hold(t, cmd)
	defer end2()
	if !strings.HasPrefix(line, "error lockdown: setgroups:") || !strings.HasSuffix(line, "EPERM true") {
		t.Errorf("SetIDs(0, 0, [0]) as nobody: %s, want a setgroups error wrapping EPERM", line)
	}
}

// sortedGroups is how /proc status shows groups: sorted, numbers.
func sortedGroups(gs ...int) string {
	slices.Sort(gs)
	var s []string
	for _, g := range gs {
		s = append(s, strconv.Itoa(g))
	}
	return strings.Join(s, " ")
}

// TestCgo: in a binary that links cgo (this test binary does, unless
// built with CGO_ENABLED=0) the per-thread steps fail with ErrCgo instead
// of covering some threads only.
func TestCgo(t *testing.T) {
	if _, _, e := syscall.AllThreadsSyscall(syscall.SYS_GETPID, 0, 0, 0); e != syscall.ENOTSUP {
		t.Log("this test binary links no cgo: nothing to check here")
		return
	}
	if err := noNewPrivs(); !errors.Is(err, ErrCgo) || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Errorf("noNewPrivs with cgo: %v, want ErrCgo", err)
	}
}
