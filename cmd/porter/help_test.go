package main

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestHelpPlaceholders: every option line of up, run, ls and release
// shows a placeholder in capitals for its value (flag.PrintDefaults takes
// a backquoted word of the usage as the value's name, or else the type:
// "-dir porter.sock" and "-socket string" said nothing useful), or none
// for a boolean; release's help says what a token is.
func TestHelpPlaceholders(t *testing.T) {
	bools := map[string]bool{"-creator-as-root": true, "-exit-on-creator-loss": true, "-v": true, "-json": true}
	line := regexp.MustCompile(`^  (-[a-z-]+)(?: (\S+))?`)
	for _, c := range []string{"up", "run", "ls", "release"} {
		out, err := exec.Command(filepath.Join(binDir, "porter"), c, "--help").CombinedOutput()
		if err != nil {
			t.Fatalf("porter %s --help: %v", c, err)
		}
		n := 0
		for _, l := range strings.Split(string(out), "\n") {
			m := line.FindStringSubmatch(l)
			if m == nil {
				continue
			}
			n++
			if bools[m[1]] {
				continue
			}
			if m[2] == "" || strings.ToUpper(m[2]) != m[2] {
				t.Errorf("porter %s --help: %q: want a placeholder in capitals (like -dir DIR)", c, l)
			}
		}
		if n == 0 {
			t.Errorf("porter %s --help lists no options:\n%s", c, out)
		}
	}
	out, _ := exec.Command(filepath.Join(binDir, "porter"), "release", "--help").CombinedOutput()
	for _, w := range []string{"32 hex digits", "8-digit prefix that\nporter ls shows is refused"} {
		if !strings.Contains(string(out), w) {
			t.Errorf("porter release --help lacks %q:\n%s", w, out)
		}
	}
	out, _ = exec.Command(filepath.Join(binDir, "porter"), "up", "--help").CombinedOutput()
	for _, w := range []string{"$PORTER_CREATOR", "next to this\nporter binary", "$PORTER_SOCKET"} {
		if !strings.Contains(string(out), w) {
			t.Errorf("porter up --help lacks %q", w)
		}
	}
}

// TestReleasePrefix: the 8 digits porter ls shows are refused with a
// hint that release needs the whole token.
func TestReleasePrefix(t *testing.T) {
	d := up(t, "")
	out, err := d.porterCmd(-1, -1, "release", "0123abcd").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "want 32 hex digits") || !strings.Contains(string(out), "only a token's first 8 digits") {
		t.Fatalf("porter release 0123abcd: %v %q", err, out)
	}
}
