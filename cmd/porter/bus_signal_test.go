package main

import (
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/porter-ipc/porter/internal/testutil"
)

const (
	busListening = "porter bus listen: listening"
	busMonitorOn = "porter bus monitor: monitoring"
)

// TestBusSignalTools: emit publishes, listen prints exactly the signals
// its KEY=VALUE match selects (text and JSON), monitor prints the frames
// the master handles; bad input is exit 2.
func TestBusSignalTools(t *testing.T) {
	testutil.CheckLeaks(t)
	path, _ := busUp(t)
	mon := startBus(t, busCmd(path, nil, "monitor", "--json"), busMonitorOn)
	red := startBus(t, busCmd(path, nil, "listen", "--count", "1", "interface=com.example.Light", "arg0=red"), busListening)
	all := startBus(t, busCmd(path, nil, "listen", "--json", "--count", "2", "path_namespace=/com/example"), busListening)
	emit := func(args ...string) {
		t.Helper()
		argv := append([]string{"emit", "--path", "/com/example/Light", "--interface", "com.example.Light", "--member", "Changed"}, args...)
		if out, errOut, st := busRun(path, nil, argv...); st != 0 || out != "" {
			t.Fatalf("emit %v: status %d, %q %q", args, st, out, errOut)
		}
	}
	emit("blue")
	emit("red", "bright")
	if err := red.wait(); err != nil {
		t.Fatalf("listen arg0=red: %v\n%s", err, red.stderr)
	}
	if !regexp.MustCompile(`^:1\.\d+ /com/example/Light com\.example\.Light\.Changed "red" "bright"\n$`).MatchString(red.stdout.String()) {
		t.Errorf("listen arg0=red printed %q", red.stdout)
	}
	if err := all.wait(); err != nil {
		t.Fatalf("listen --json: %v\n%s", err, all.stderr)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(all.stdout.String()), "\n") {
		var s busSignalJSON
		if err := json.Unmarshal([]byte(l), &s); err != nil || s.Member != "Changed" || s.PID == 0 {
			t.Fatalf("listen --json line %q: %v", l, err)
		}
		got = append(got, strings.Join(s.Args, " "))
	}
	if strings.Join(got, ",") != "blue,red bright" {
		t.Errorf("listen --json got %q", got)
	}
	// The monitor saw both signals, multicast (to "-").
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("monitor printed:\n%s\n%s", mon.stdout, mon.stderr)
		}
	})
	waitFor(t, "the monitor to print both signals", func() bool {
		n := 0
		for _, l := range strings.Split(mon.stdout.String(), "\n") {
			var c busCopyJSON
			if json.Unmarshal([]byte(l), &c) == nil && c.Type == "SIGNAL" && c.Member == "Changed" && c.To == "-" {
				n++
			}
		}
		return n == 2
	})
	// Bad input.
	for _, c := range [][]string{
		{"listen", "color=red"}, {"listen", "arg16=x"}, {"listen", "sender=:x"}, {"listen", "red"},
		{"emit", "--interface", "com.example.I", "--member", "M"},
		{"emit", "--path", "/a", "--interface", "com.example.I", "--member", "Bad-Member"},
		{"monitor", "extra"},
	} {
		if _, errOut, st := busRun(path, nil, c...); st != 2 || !strings.HasPrefix(errOut, "porter bus "+c[0]+": ") {
			t.Errorf("porter bus %v: status %d, %q", c, st, errOut)
		}
	}
}

// TestBusMonitorDenied: the default policy lets only root and the bus's
// uid monitor; nobody is told DENIED and why.
func TestBusMonitorDenied(t *testing.T) {
	testutil.RequireRoot(t)
	setpriv := testutil.RequireProgram(t, "setpriv")
	uid, gid := testutil.Nobody(t)
	asNobody := []string{setpriv, "--reuid", strconv.Itoa(uid), "--regid", strconv.Itoa(gid), "--clear-groups", "--"}
	path, _ := busUp(t)
	_, errOut, st := busRun(path, asNobody, "monitor")
	if st != 2 || !strings.Contains(errOut, "DENIED") || !strings.Contains(errOut, "policy") {
		t.Errorf("monitor as nobody: status %d, %q", st, errOut)
	}
	// nobody may still emit and listen.
	l := startBus(t, busCmd(path, asNobody, "listen", "--count", "1", "member=Ping"), busListening)
	if _, errOut, st := busRun(path, asNobody, "emit", "--path", "/a", "--interface", "com.example.I", "--member", "Ping"); st != 0 {
		t.Fatalf("emit as nobody: %d %s", st, errOut)
	}
	if err := l.wait(); err != nil || !strings.HasSuffix(l.stdout.String(), " /a com.example.I.Ping\n") {
		t.Errorf("listen as nobody: %v %q", err, l.stdout)
	}
}

// TestBusSignalHelp: the three tools answer --help with their usage and
// capitalised placeholders.
func TestBusSignalHelp(t *testing.T) {
	line := regexp.MustCompile(`^  (-[a-z-]+)(?: (\S+))?`)
	for _, tool := range []string{"emit", "listen", "monitor"} {
		_, out, st := busRun("", nil, tool, "--help")
		if st != 0 || !strings.Contains(out, "usage: porter bus "+tool) || !strings.Contains(out, "-bus PATH") {
			t.Errorf("porter bus %s --help: %d\n%s", tool, st, out)
		}
		for _, l := range strings.Split(out, "\n") {
			if m := line.FindStringSubmatch(l); m != nil && m[1] != "-json" && (m[2] == "" || strings.ToUpper(m[2]) != m[2]) {
				t.Errorf("porter bus %s --help: %q: want a placeholder in capitals", tool, l)
			}
		}
	}
}
