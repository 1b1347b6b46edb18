// Package capexample_test runs the example programs of docs/capabilities.md.
package capexample_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/porter-ipc/porter/internal/testutil"
)

// TestExample builds the server and the client and runs "server client":
// the client gets a counter, delegates it to its child, and the server
// sees every addition.
func TestExample(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", dir+"/", "./server", "./client")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(filepath.Join(dir, "server"), filepath.Join(dir, "client"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("server client: %v\n%s", err, out)
	}
	want := "client: alice = 1\nchild: alice = 11\nclient: alice = 12\nserver: counter alice = 12\n"
	if string(out) != want {
		t.Fatalf("output:\n%s\nwant:\n%s", out, want)
	}
	if strings.Contains(string(out), "PORTER_CAP") {
		t.Fatal("a capability variable leaked into the output")
	}
}
