package cap

import (
	"os"
	"testing"

	"github.com/porter-ipc/porter/internal/fdutil"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// TestSameFile: kcmp tells a copy of a door (one file description) from
// another socket, which is what dedup needs when inode numbers collide.
func TestSameFile(t *testing.T) {
	testutil.CheckLeaks(t)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, b := os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b")
	defer a.Close()
	defer b.Close()
	dup, err := fdutil.DupCloexec(a)
	if err != nil {
		t.Fatal(err)
	}
	c := os.NewFile(uintptr(dup), "c")
	defer c.Close()
	if !sameFile(a, c) {
		t.Error("a and its dup are not the same file")
	}
	if sameFile(a, b) {
		t.Error("the two ends of a pair are the same file")
	}
}
