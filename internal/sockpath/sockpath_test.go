package sockpath

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	testutil.RunChildren(map[string]func() int{"listen": childListen})
	os.Exit(m.Run())
}

// childListen calls Listen at $SOCKPATH_PATH and prints the error.
func childListen() int {
	l, err := Listen("unixpacket", os.Getenv("SOCKPATH_PATH"), 0o666)
	if err == nil {
		l.Close()
		fmt.Println("listening")
		return 0
	}
	fmt.Println(err)
	if errors.Is(err, unix.EACCES) {
		fmt.Println("errno EACCES")
	}
	return 1
}

// stale leaves a socket of network at path that nobody listens on.
func stale(t *testing.T, network, path string) {
	t.Helper()
	l, err := net.ListenUnix(network, &net.UnixAddr{Name: path, Net: network})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
}

// TestListen: what Listen does with each kind of file at the path. Only a
// stale socket is replaced; a live socket (of either type) is EADDRINUSE
// and keeps serving; a file that is not a socket is named and left alone.
func TestListen(t *testing.T) {
	testutil.CheckLeaks(t)
	for _, tc := range []struct {
		name    string
		network string
		setup   func(t *testing.T, path string) (cleanup func())
		want    string // "" binds; else a part of the error, which is EADDRINUSE
	}{
		{"nothing", "unixpacket", nil, ""},
		{"stale stream", "unix", func(t *testing.T, p string) func() { stale(t, "unix", p); return nil }, ""},
		{"stale seqpacket", "unixpacket", func(t *testing.T, p string) func() { stale(t, "unixpacket", p); return nil }, ""},
		{"stale stream, seqpacket wanted", "unixpacket", func(t *testing.T, p string) func() { stale(t, "unix", p); return nil }, ""},
		{"live seqpacket", "unixpacket", func(t *testing.T, p string) func() {
			l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: p, Net: "unixpacket"})
			if err != nil {
				t.Fatal(err)
			}
			return func() { l.Close() }
		}, "already listening"},
		{"live stream, seqpacket wanted", "unixpacket", func(t *testing.T, p string) func() {
			l, err := net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			return func() { l.Close() }
		}, "already listening"},
		{"regular file", "unixpacket", func(t *testing.T, p string) func() {
			if err := os.WriteFile(p, []byte("data"), 0o644); err != nil {
				t.Fatal(err)
			}
			return nil
		}, "is a regular file, not a socket; porter will not remove it"},
		{"directory", "unix", func(t *testing.T, p string) func() {
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
			return nil
		}, "is a directory"},
		{"fifo", "unix", func(t *testing.T, p string) func() {
			if err := unix.Mkfifo(p, 0o644); err != nil {
				t.Fatal(err)
			}
			return nil
		}, "is a FIFO"},
		{"symlink to a stale socket", "unix", func(t *testing.T, p string) func() {
			stale(t, "unix", p+".target")
			if err := os.Symlink(p+".target", p); err != nil {
				t.Fatal(err)
			}
			return nil
		}, "is a symbolic link"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s.sock")
			if tc.setup != nil {
				if c := tc.setup(t, path); c != nil {
					defer c()
				}
			}
			var before unix.Stat_t
			had := unix.Lstat(path, &before) == nil
			l, id, err := ListenWith(tc.network, path, Options{Perm: 0o640})
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Listen: %v", err)
				}
				defer l.Close()
				st, err := os.Lstat(path)
				if err != nil || st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o640 || !id.Is(path) {
					t.Fatalf("socket file: %v %v, want a socket with mode 0640 that id names", st, err)
				}
				c, err := net.Dial(tc.network, path)
				if err != nil {
					t.Fatalf("dial the new listener: %v", err)
				}
				c.Close()
				return
			}
			if err == nil {
				l.Close()
				t.Fatalf("Listen succeeded, want an error with %q", tc.want)
			}
			var oe *net.OpError
			if !errors.As(err, &oe) || oe.Addr.String() != path || !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Listen: %v, want a *net.OpError for %s, EADDRINUSE, with %q", err, path, tc.want)
			}
			var after unix.Stat_t
			if !had || unix.Lstat(path, &after) != nil || after.Ino != before.Ino {
				t.Fatalf("the file at the path was replaced or removed")
			}
		})
	}
}

// TestNoReplaceAndLock: NoReplace refuses a stale socket; a held
// PATH.lock is EBUSY and the stale socket stays; free, it is replaced and
// PATH.lock is left, as s6 leaves it.
func TestNoReplaceAndLock(t *testing.T) {
	testutil.CheckLeaks(t)
	path := filepath.Join(t.TempDir(), "s.sock")
	stale(t, "unix", path)
	if _, _, err := ListenWith("unix", path, Options{NoReplace: true}); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("NoReplace over a stale socket: %v, want EADDRINUSE", err)
	}
	unlock, err := Lock(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Listen("unix", path, 0o600)
	unlock()
	if !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("Listen with PATH.lock held: %v, want EBUSY", err)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("the stale socket was touched under the lock: %v", err)
	}
	l, err := Listen("unix", path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("Close removed the socket file: %v (Listen's listener leaves it)", err)
	}
	if _, err := os.Lstat(path + ".lock"); err != nil {
		t.Fatalf("PATH.lock: %v", err)
	}
	if _, err := Listen("tcp", path, 0o600); err == nil || !strings.Contains(err.Error(), "unknown network") {
		t.Fatalf("network tcp: %v, want unknown network", err)
	}
}

// TestStaleNotOurs: a stale socket of root's in root's directory, as
// nobody, is not "address already in use" but says whose it is and what
// to do, with EACCES; the socket stays. So is one nobody may not even
// connect to.
func TestStaleNotOurs(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CheckLeaks(t)
	dir := testutil.SharedDir(t)
	path := filepath.Join(dir, "porter.sock")
	for _, lock := range []bool{false, true} {
		stale(t, "unixpacket", path)
		if err := os.Chmod(path, 0o666); err != nil { // as porter up leaves it
			t.Fatal(err)
		}
		if lock { // PATH.lock left by root's earlier server
			unlock, err := Lock(path)
			if err != nil {
				t.Fatal(err)
			}
			unlock()
		}
		uid, gid := testutil.Nobody(t)
		cmd := testutil.Child(t, "listen", uid, gid)
		cmd.Env = append(cmd.Env, "SOCKPATH_PATH="+path)
		out, err := cmd.Output()
		want := fmt.Sprintf("a stale socket (no server listens on it) is at %s, owned by uid 0, which uid %d cannot replace: remove it, or run as uid 0 or root", path, uid)
		if err == nil || !strings.Contains(string(out), want) || !strings.Contains(string(out), "errno EACCES") {
			t.Fatalf("lock file there: %v; Listen as nobody: %v %q, want %q and EACCES", lock, err, out, want)
		}
		if _, err := os.Lstat(path); err != nil {
			t.Fatal(err)
		}
		os.Remove(path)
	}
	stale(t, "unixpacket", path)
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	uid, gid := testutil.Nobody(t)
	cmd := testutil.Child(t, "listen", uid, gid)
	cmd.Env = append(cmd.Env, "SOCKPATH_PATH="+path)
	out, err := cmd.Output()
	if want := "which uid " + fmt.Sprint(uid) + " may not connect to"; err == nil || !strings.Contains(string(out), want) || !strings.Contains(string(out), "errno EACCES") {
		t.Fatalf("Listen as nobody over root's 0600 socket: %v %q, want %q and EACCES", err, out, want)
	}
}

// TestNoFollow: whoever may write the socket's directory cannot make
// Lock or the chmod after bind reach another file through a symlink (or
// a second hard link) put where PATH.lock or the socket should be.
func TestNoFollow(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "s.sock")
	if err := os.Symlink(target, path+".lock"); err != nil {
		t.Fatal(err)
	}
	if unlock, err := Lock(path); err == nil || !errors.Is(err, unix.ELOOP) {
		if err == nil {
			unlock()
		}
		t.Fatalf("Lock through a symlinked PATH.lock: %v, want ELOOP", err)
	}
	os.Remove(path + ".lock")
	if err := os.Link(target, path+".lock"); err != nil {
		t.Fatal(err)
	}
	if unlock, err := Lock(path); err == nil || !errors.Is(err, unix.EINVAL) {
		if err == nil {
			unlock()
		}
		t.Fatalf("Lock on a second hard link of another file: %v, want EINVAL", err)
	}
	os.Remove(path + ".lock")

	// What the chmod after bind meets if the socket was swapped for a
	// symlink: a refusal, and the target keeps its mode.
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	if _, err := chmodSocket(path, 0o666); err == nil || !errors.Is(err, unix.ENOTSOCK) {
		t.Fatalf("chmod of a symlink in place of the socket: %v, want ENOTSOCK", err)
	}
	if st, err := os.Stat(target); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the symlink's target: %v %v, want mode 0600 unchanged", st.Mode(), err)
	}
	os.Remove(path)
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := chmodSocket(path, 0o666); err == nil || !errors.Is(err, unix.ENOTSOCK) {
		t.Fatalf("chmod of a regular file in place of the socket: %v, want ENOTSOCK", err)
	}
}
