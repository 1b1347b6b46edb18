package acceptloop_test

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/porter-ipc/porter/internal/acceptloop"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	testutil.RunChildren(map[string]func() int{"emfile": emfileChild})
	os.Exit(m.Run())
}

func listen(t *testing.T) (*net.UnixListener, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, path
}

func dial(t *testing.T, path string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// run starts Run in a goroutine; the channel gets its result.
func run(l net.Listener, handle func(net.Conn), opts acceptloop.Options) <-chan error {
	done := make(chan error, 1)
	go func() { done <- acceptloop.Run(l, handle, opts) }()
	return done
}

// TestRunUntilClosed: every client is handed to handle; closing the
// listener ends Run with nil.
func TestRunUntilClosed(t *testing.T) {
	testutil.CheckLeaks(t)
	l, path := listen(t)
	conns := make(chan net.Conn, 3)
	done := run(l, func(c net.Conn) { conns <- c }, acceptloop.Options{})
	for range 3 {
		dial(t, path)
		(<-conns).Close()
	}
	l.Close()
	if err := <-done; err != nil {
		t.Fatalf("Run after Close: %v, want nil", err)
	}
}

// TestRunSlots: with one slot, the second client is handled once the
// first gives its slot back; Stop ends a loop that waits for a slot.
func TestRunSlots(t *testing.T) {
	testutil.CheckLeaks(t)
	l, path := listen(t)
	slots := make(chan struct{}, 1)
	stop := make(chan struct{})
	conns := make(chan net.Conn, 2)
	done := run(l, func(c net.Conn) { conns <- c }, acceptloop.Options{Slots: slots, Stop: stop})
	dial(t, path)
	dial(t, path)
	(<-conns).Close()
	if len(slots) != 1 {
		t.Fatalf("%d slots taken with one connection being handled, want 1", len(slots))
	}
	<-slots // the first is done
	(<-conns).Close()
	// The loop now waits for the slot the second holds: Stop ends it.
	close(stop)
	if err := <-done; err != nil {
		t.Fatalf("Run after Stop: %v, want nil", err)
	}
}

// TestRunTemporary: a deadline that passed is a temporary failure: Run
// logs it, pauses, and accepts again once the deadline is lifted.
func TestRunTemporary(t *testing.T) {
	testutil.CheckLeaks(t)
	l, path := listen(t)
	if err := l.SetDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	logged := make(chan error, 1)
	conns := make(chan net.Conn, 1)
	done := run(l, func(c net.Conn) { conns <- c }, acceptloop.Options{Log: func(err error) {
		select {
		case logged <- err:
			l.SetDeadline(time.Time{})
		default:
		}
	}})
	if err := <-logged; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("logged %v, want a timeout", err)
	}
	dial(t, path)
	(<-conns).Close()
	l.Close()
	if err := <-done; err != nil {
		t.Fatalf("Run after Close: %v, want nil", err)
	}
}

// TestRunStopInPause: Stop ends a loop that pauses after a failure.
func TestRunStopInPause(t *testing.T) {
	testutil.CheckLeaks(t)
	l, _ := listen(t)
	if err := l.SetDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	logs := 0
	done := run(l, func(c net.Conn) { c.Close() }, acceptloop.Options{Stop: stop, Log: func(error) {
		if logs++; logs == 1 {
			close(stop)
		}
	}})
	if err := <-done; err != nil {
		t.Fatalf("Run after Stop: %v, want nil", err)
	}
}

// TestRunFails: an Accept error that is not temporary (EINVAL from a
// socket that is not listening) ends Run with it.
func TestRunFails(t *testing.T) {
	testutil.CheckLeaks(t)
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "not listening")
	l, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	err = acceptloop.Run(l, func(c net.Conn) { c.Close() }, acceptloop.Options{Log: func(err error) { t.Errorf("logged %v as temporary", err) }})
	if !errors.Is(err, unix.EINVAL) {
		t.Fatalf("Run on a socket that is not listening: %v, want EINVAL", err)
	}
}

func TestTemporary(t *testing.T) {
	op := func(err error) error {
		return &net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", err)}
	}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{op(unix.EMFILE), true},
		{op(unix.ENFILE), true},
		{op(unix.ENOBUFS), true},
		{op(unix.ENOMEM), true},
		{op(unix.ECONNABORTED), true},
		{op(os.ErrDeadlineExceeded), true},
		{op(unix.EINVAL), false},
		{op(net.ErrClosed), false},
		{errors.New("other"), false},
	} {
		if got := acceptloop.Temporary(tc.err); got != tc.want {
			t.Errorf("Temporary(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestRunEMFILE: in a child whose RLIMIT_NOFILE is used up, Accept fails
// with EMFILE while a client waits in the backlog; the loop logs it,
// survives, and accepts the client once the child frees fds.
func TestRunEMFILE(t *testing.T) {
	testutil.CheckLeaks(t)
	l, path := listen(t)
	lf, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	c := dial(t, path) // waits in the backlog until the child accepts it
	cmd := testutil.Child(t, "emfile", -1, -1, lf)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Only the child holds the listener now: if it dies, the client
	// sees the connection reset instead of waiting.
	lf.Close()
	l.Close()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "accepted\n" {
		t.Errorf("client read %q %v, want the child's accepted line", line, err)
	}
	report, _ := bufio.NewReader(out).ReadString('\n')
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v (%s)", err, report)
	}
	if report != "EMFILE logged\n" {
		t.Errorf("child reported %q, want EMFILE logged", report)
	}
}

func emfileChild() int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "emfile child: "+format+"\n", a...)
		return 1
	}
	l, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		return fail("%v", err)
	}
	unix.Close(3)
	open := len(testutil.OpenFDs())
	lim := unix.Rlimit{Cur: uint64(open + 8), Max: uint64(open + 8)}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fail("setrlimit: %v", err)
	}
	var fill []int
	for {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == unix.EMFILE {
			break
		}
		if err != nil {
			return fail("open: %v", err)
		}
		fill = append(fill, fd)
	}
	sawEMFILE := false
	err = acceptloop.Run(l, func(c net.Conn) {
		c.Write([]byte("accepted\n"))
		c.Close()
		l.Close()
	}, acceptloop.Options{Log: func(err error) {
		if errors.Is(err, unix.EMFILE) && !sawEMFILE {
			sawEMFILE = true
			for _, fd := range fill {
				unix.Close(fd)
			}
		}
	}})
	if err != nil {
		return fail("Run: %v", err)
	}
	if !sawEMFILE {
		return fail("no EMFILE logged (%d fds filled)", len(fill))
	}
	fmt.Println("EMFILE logged")
	return 0
}
