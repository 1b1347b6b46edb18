// Package dbusscenario drives real D-Bus clients from Debian (busctl,
// dbus-send, dbus-monitor, gdbus, dbus-test-tool and python3-dbus peers)
// through the scenarios of issue 13 against a bus, and writes what they
// print into one transcript per scenario, normalised so that two buses
// that behave the same give equal transcripts (see Normalize).
//
// The package's own test runs the scenarios against a private dbus-daemon,
// the reference, and keeps the transcripts as golden files in testdata;
// Check runs them against another bus (porter's D-Bus front) and reports
// where it differs from the goldens.
//
// Every client runs under `timeout 10` and every wait is for a condition
// (a line printed, a name owned or released, a probe signal seen by a
// monitor), never a fixed sleep.
package dbusscenario

import (
	"embed"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/porter-ipc/porter/internal/testutil"
)

//go:embed testdata/peer.py
var peerPy []byte

//go:embed testdata/*.golden
var goldens embed.FS

// programs are the clients the scenarios run.
var programs = []string{"busctl", "dbus-send", "dbus-monitor", "gdbus", "dbus-test-tool", "timeout", "/usr/bin/python3"}

// Names lists the transcripts Run returns: one per scenario, and one
// "NAME.nobody" for those that run again as the user nobody (only when
// the test runs as root).
func Names() []string {
	var out []string
	for _, sc := range scenarios {
		if !sc.onlyNobody {
			out = append(out, sc.name)
		}
	}
	if os.Geteuid() == 0 {
		for _, sc := range scenarios {
			if sc.nobody {
				out = append(out, sc.name+".nobody")
			}
		}
	}
	return out
}

// Run runs every scenario, each as a subtest of t, against the bus whose
// socket is at path (address unix:path=PATH), and returns the normalised
// transcripts by name (see Names). The bus must let every user connect
// (as root, the scenarios also run as nobody: the socket and the
// directories above it must let others in), own names, become a monitor
// (root only) and pass fds. A scenario that cannot finish (a client
// timed out, an awaited line never came) fails its subtest and has no
// transcript. `go test -run 'Test/queue'` runs one scenario.
func Run(t *testing.T, path string) map[string]string {
	t.Helper()
	for _, p := range programs {
		testutil.RequireProgram(t, p)
	}
	dir := testutil.SharedDir(t)
	if err := os.WriteFile(filepath.Join(dir, "peer.py"), peerPy, 0o644); err != nil {
		t.Fatal(err)
	}
	var nobody *syscall.Credential
	if os.Geteuid() == 0 {
		if err := reachable(path); err != nil {
			t.Fatalf("dbusscenario: the scenarios also run as nobody: %v", err)
		}
		uid, gid := testutil.Nobody(t)
		nobody = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	}
	res, err := residents(path)
	if err != nil {
		t.Fatalf("dbusscenario: listing the connections on %s: %v", path, err)
	}
	out := map[string]string{}
	for _, sc := range scenarios {
		for _, as := range []struct {
			suffix string
			cred   *syscall.Credential
		}{{"", nil}, {".nobody", nobody}} {
			if as.suffix != "" && (!sc.nobody || nobody == nil) || as.suffix == "" && sc.onlyNobody {
				continue
			}
			name := sc.name + as.suffix
			t.Run(name, func(t *testing.T) {
				s := newSession(t, path, dir, as.cred, res)
				sc.run(s)
				if !t.Failed() {
					out[name] = s.transcript()
				}
			})
		}
	}
	return out
}

// reachable checks that every user may connect to the socket at path:
// search permission on each directory above it, write on the socket.
func reachable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o002 == 0 {
		return fmt.Errorf("socket %s has mode %v: others may not connect (chmod o+w)", path, fi.Mode().Perm())
	}
	for dir := filepath.Dir(path); ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("directory %s has mode %v: others may not reach the socket %s (chmod o+x)", dir, fi.Mode().Perm(), path)
		}
		if dir == "/" {
			return nil
		}
	}
}

// Golden returns the reference transcript of the scenario name (see
// Names), as dbus-daemon gave it.
func Golden(name string) (string, error) {
	b, err := goldens.ReadFile("testdata/" + name + ".golden")
	if err != nil {
		return "", fmt.Errorf("dbusscenario: no golden transcript for %q: %w", name, err)
	}
	return string(b), nil
}

// Check runs every scenario against the bus whose socket is at path and
// fails t with a line diff for each transcript that differs from
// dbus-daemon's (the goldens in testdata). It is the one call a test of
// another bus (porter's D-Bus front) makes:
//
//	dbusscenario.Check(t, sock) // sock: the bus's socket, as for Run
func Check(t *testing.T, path string) {
	t.Helper()
	got := Run(t, path)
	for _, name := range Names() {
		g, ok := got[name]
		if !ok {
			continue // its subtest failed already
		}
		want, err := Golden(name)
		if err != nil {
			t.Error(err)
			continue
		}
		if d := Diff(want, g); d != "" {
			t.Errorf("scenario %s differs from dbus-daemon (- dbus-daemon, + this bus):\n%s", name, d)
		}
	}
}

// goldenDir is testdata in the package's source directory, where the
// package's test rewrites the goldens under -update.
func goldenDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "testdata")
}

// Diff returns a line diff of want and got ("-" lines only in want, "+"
// only in got, two lines of context), or "" if they are equal.
func Diff(want, got string) string {
	if want == got {
		return ""
	}
	a, b := strings.Split(want, "\n"), strings.Split(got, "\n")
	// Longest common subsequence, by dynamic programming: transcripts
	// are a few hundred lines.
	lcs := make([][]int, len(a)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(b)+1)
	}
	for i := len(a) - 1; i >= 0; i-- {
		for j := len(b) - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	type line struct {
		op   byte
		text string
	}
	var ops []line
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case i < len(a) && j < len(b) && a[i] == b[j]:
			ops = append(ops, line{' ', a[i]})
			i, j = i+1, j+1
		case i < len(a) && (j == len(b) || lcs[i+1][j] >= lcs[i][j+1]):
			ops = append(ops, line{'-', a[i]})
			i++
		default:
			ops = append(ops, line{'+', b[j]})
			j++
		}
	}
	const context = 2
	var out strings.Builder
	last := -1
	for k, o := range ops {
		near := false
		for d := -context; d <= context; d++ {
			if k+d >= 0 && k+d < len(ops) && ops[k+d].op != ' ' {
				near = true
			}
		}
		if !near {
			continue
		}
		if last >= 0 && k > last+1 {
			out.WriteString("  …\n")
		}
		fmt.Fprintf(&out, "%c %s\n", o.op, o.text)
		last = k
	}
	return out.String()
}
