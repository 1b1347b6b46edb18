package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
)

// BuildCommands builds the module's commands without cgo (import paths such as
// "github.com/porter-ipc/porter/cmd/porter", or "./cmd/porter" relative to
// the module root) into a fresh directory that every user may enter, so a
// child dropped to nobody can run them. Call it from TestMain; cleanup
// removes the directory. When $PORTER_TEST_BIN names a directory (make
// test-nobody builds the commands there as root), it is used as it is.
func BuildCommands(pkgs ...string) (dir string, cleanup func(), err error) {
	if d := os.Getenv("PORTER_TEST_BIN"); d != "" {
		return d, func() {}, nil
	}
	dir, err = os.MkdirTemp("", "porter-bin-")
	if err != nil {
		return "", nil, err
	}
	cleanup = func() { os.RemoveAll(dir) }
	if err := os.Chmod(dir, 0o755); err != nil {
		cleanup()
		return "", nil, err
	}
	_, self, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(self), "..", "..")
	args := append([]string{"build", "-o", dir + "/"}, pkgs...)
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	// As make build: without cgo, so that the privilege drop and the
	// creator's lockdown reach every thread (internal/lockdown).
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		cleanup()
		return "", nil, fmt.Errorf("go build %v: %v\n%s", pkgs, err, out)
	}
	return dir, cleanup, nil
}
