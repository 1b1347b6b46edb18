package bus

import (
	"log"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/porter-ipc/porter/fdpass"
	"github.com/porter-ipc/porter/internal/dbusscenario"
	"github.com/porter-ipc/porter/internal/testutil"
)

// TestDBusScenarios runs issue 13's scenarios with the real Debian
// clients against porter's D-Bus front door and diffs their transcripts
// with dbus-daemon's (internal/dbusscenario's goldens): a difference in
// behaviour is a failing diff.
func TestDBusScenarios(t *testing.T) {
	testutil.RequireRoot(t) // the scenarios run again as nobody, and monitor
	dir := testutil.SharedDir(t)
	// The reference dbus-daemon lets everyone do everything but monitor,
	// which it allows root and its own user; so does this bus, so the
	// diff shows the protocol, not the policy.
	asDaemon := func(c fdpass.Cred, r Request) Decision {
		if r.Op == OpMonitor {
			return Decision{Allow: c.UID == 0 || c.UID == os.Geteuid()}
		}
		return Decision{Allow: true}
	}
	m, err := Listen(filepath.Join(dir, "bus"), asDaemon)
	if err != nil {
		t.Fatal(err)
	}
	m.ErrorLog = log.New(testWriter{t}, "", 0)
	sock := filepath.Join(dir, "dbus")
	if err := m.ListenDBus(sock); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Serve() }()
	defer func() {
		m.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	dbusscenario.Check(t, sock)
}

// testWriter sends the master's log lines to the test's log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
