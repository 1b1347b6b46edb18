package testutil

import (
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/porter-ipc/porter/internal/fdutil"
)

// SharedDir returns a fresh directory, removed when the test ends, that
// every user may enter (t.TempDir's parent is private to its owner), for
// sockets and files a child running as nobody must reach.
func SharedDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "porter-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// WaitFor polls cond every few milliseconds until it holds, failing the
// test after 10 seconds.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// FreePort returns a port free for both TCP and UDP on 127.0.0.1 now.
func FreePort(t testing.TB) uint16 {
	t.Helper()
	for i := 0; i < 100; i++ {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp4", l.Addr().String())
		l.Close()
		if err == nil {
			u.Close()
			return uint16(port)
		}
	}
	t.Fatal("no port free for both TCP and UDP")
	return 0
}

// MainWithCommands is a TestMain body for packages whose tests run the
// module's commands: it builds pkgs (BuildCommands), hands the directory
// to set, runs the tests, removes the directory and exits.
func MainWithCommands(m *testing.M, set func(dir string), pkgs ...string) {
	dir, cleanup, err := BuildCommands(pkgs...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	set(dir)
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// FD returns f's descriptor number without switching it to blocking mode
// (as f.Fd would). f keeps it.
func FD(t testing.TB, f *os.File) int {
	t.Helper()
	n, err := fdutil.Number(f)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// ReportLatency reports the median and 99th percentile of lat (one entry
// per operation) on b as p50-µs and p99-µs. It sorts lat.
func ReportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}

// ThreadStatus returns the distinct values of a field of
// /proc/PID/task/TID/status over every thread of pid, with runs of white
// space folded to one space. Capabilities, no_new_privs and seccomp are
// per thread, so a check of one thread proves nothing about the others.
func ThreadStatus(t testing.TB, pid int, field string) []string {
	t.Helper()
	var vals []string
	for _, tid := range threads(t, pid) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, tid))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, field+":"); ok {
				if v = strings.Join(strings.Fields(v), " "); !slices.Contains(vals, v) {
					vals = append(vals, v)
				}
			}
		}
	}
	return vals
}

// OnlyChild returns the one child process of pid, failing the test unless
// there is exactly one. It reads the children of every thread: Go forks
// from whichever thread runs the goroutine, so /proc/PID/task/PID/children
// alone can miss a child.
func OnlyChild(t testing.TB, pid int) int {
	t.Helper()
	var kids []string
	for _, tid := range threads(t, pid) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, tid))
		kids = append(kids, strings.Fields(string(b))...)
	}
	if len(kids) != 1 {
		t.Fatalf("children of %d: %q, want one", pid, kids)
	}
	child, _ := strconv.Atoi(kids[0])
	return child
}

// threads lists the thread ids of pid.
func threads(t testing.TB, pid int) []string {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	tids := make([]string, len(ents))
	for i, e := range ents {
		tids[i] = e.Name()
	}
	return tids
}
