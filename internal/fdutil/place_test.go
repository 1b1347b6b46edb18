package fdutil_test

import (
	"errors"
	"testing"

	"github.com/porter-ipc/porter/internal/fdutil"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// base is where the tests place fds: high enough to be free in a test
// binary, which they check.
const base = 300

// closeOnExec maps every open fd to whether it is close-on-exec.
func closeOnExec(t *testing.T) map[int]bool {
	t.Helper()
	m := map[int]bool{}
	for fd := range testutil.OpenFDs() {
		if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
			m[fd] = fl&unix.FD_CLOEXEC != 0
		}
	}
	return m
}

// inode returns the inode fd is open to.
func inode(t *testing.T, fd int) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatalf("fstat %d: %v", fd, err)
	}
	return st.Ino
}

// pipeAt returns a pipe's read end, close-on-exec, moved to fd at, and
// closes it when the test ends.
func pipeAt(t *testing.T, at int) int {
	t.Helper()
	if _, err := unix.FcntlInt(uintptr(at), unix.F_GETFD, 0); err == nil {
		t.Fatalf("fd %d is open already: the test needs it free", at)
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	unix.Close(p[1])
	if err := unix.Dup3(p[0], at, unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	unix.Close(p[0])
	fd := at
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// closeRange closes the n fds from first when the test ends.
func closeRange(t *testing.T, first, n int) {
	t.Cleanup(func() {
		for fd := first; fd < first+n; fd++ {
			unix.Close(fd)
		}
	})
}

// TestPlace: sources that sit on each other's targets (a swap) and one
// elsewhere land on their numbers; exactly the placed fds lose
// close-on-exec; the temporary copies are gone.
func TestPlace(t *testing.T) {
	testutil.CheckLeaks(t)
	a := pipeAt(t, base+1) // goes to base: sits on b's target
	b := pipeAt(t, base)   // goes to base+1: sits on a's target
	c := pipeAt(t, base+7) // goes to base+2, from outside the range
	want := []uint64{inode(t, a), inode(t, b), inode(t, c)}
	closeRange(t, base, 3)
	before := closeOnExec(t)
	if err := fdutil.Place(base, []int{a, b, c}, fdutil.PlaceOptions{}); err != nil {
		t.Fatal(err)
	}
	for i, ino := range want {
		if got := inode(t, base+i); got != ino {
			t.Errorf("fd %d is inode %d, want source %d's %d", base+i, got, i, ino)
		}
	}
	after := closeOnExec(t)
	for fd, cloexec := range after {
		placed := fd >= base && fd < base+3
		switch {
		case placed && cloexec:
			t.Errorf("placed fd %d is close-on-exec", fd)
		case !placed && cloexec != before[fd]:
			t.Errorf("fd %d: close-on-exec %v, was %v: Place changed an fd it did not place", fd, cloexec, before[fd])
		}
		if _, ok := before[fd]; !ok && !placed {
			t.Errorf("fd %d is new after Place: a copy left open", fd)
		}
	}
}

// TestPlaceSameSourceTwice: one fd on two numbers, itself on one of them
// (porter ipcclient's 6 and 7).
func TestPlaceSameSourceTwice(t *testing.T) {
	testutil.CheckLeaks(t)
	a := pipeAt(t, base+1)
	ino := inode(t, a)
	closeRange(t, base, 2)
	if err := fdutil.Place(base, []int{a, a}, fdutil.PlaceOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, fd := range []int{base, base + 1} {
		if got := inode(t, fd); got != ino {
			t.Errorf("fd %d is inode %d, want %d", fd, got, ino)
		}
		if fl, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); fl&unix.FD_CLOEXEC != 0 {
			t.Errorf("placed fd %d is close-on-exec", fd)
		}
	}
}

// TestPlaceInTheWay: an fd that is not ours in the range is refused, and
// nothing is changed; Ours may be overwritten; Replace overwrites all.
func TestPlaceInTheWay(t *testing.T) {
	testutil.CheckLeaks(t)
	src := pipeAt(t, base+9)
	stranger := pipeAt(t, base+1)
	strangerIno := inode(t, stranger)
	closeRange(t, base, 2)
	err := fdutil.Place(base, []int{src, src}, fdutil.PlaceOptions{})
	var iw *fdutil.InTheWayError
	if !errors.As(err, &iw) || iw.FD != base+1 || iw.What == "" {
		t.Fatalf("Place over a stranger: %v, want *InTheWayError for fd %d", err, base+1)
	}
	if _, err := unix.FcntlInt(uintptr(base), unix.F_GETFD, 0); err == nil {
		t.Errorf("fd %d was placed although Place failed", base)
	}
	if got := inode(t, base+1); got != strangerIno {
		t.Errorf("the stranger on fd %d was replaced although Place failed", base+1)
	}
	if err := fdutil.Place(base, []int{src, src}, fdutil.PlaceOptions{Ours: []int{stranger}}); err != nil {
		t.Fatalf("Place over an fd in Ours: %v", err)
	}
	if got := inode(t, base+1); got != inode(t, src) {
		t.Errorf("fd %d not replaced by the source", base+1)
	}

	other := pipeAt(t, base+3)
	closeRange(t, base+2, 2)
	if err := fdutil.Place(base+2, []int{src, src}, fdutil.PlaceOptions{}); !errors.As(err, &iw) || iw.FD != other {
		t.Fatalf("Place over fd %d: %v, want *InTheWayError", other, err)
	}
	if err := fdutil.Place(base+2, []int{src, src}, fdutil.PlaceOptions{Replace: true}); err != nil {
		t.Fatalf("Place with Replace: %v", err)
	}
	if got := inode(t, other); got != inode(t, src) {
		t.Errorf("fd %d not replaced with Replace", other)
	}
}

// TestPlaceBadSource: a source that is not open fails with EBADF.
func TestPlaceBadSource(t *testing.T) {
	testutil.CheckLeaks(t)
	closeRange(t, base, 1)
	if err := fdutil.Place(base, []int{base + 50}, fdutil.PlaceOptions{}); !errors.Is(err, unix.EBADF) {
		t.Errorf("Place of a closed fd: %v, want EBADF", err)
	}
}
