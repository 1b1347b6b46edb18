package fdutil

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// PlaceOptions says what Place may overwrite.
type PlaceOptions struct {
	// Replace lets Place overwrite whatever holds a target number, as
	// s6-ipcclient does with fds 6 and 7. Otherwise an open target fd
	// that is neither a source nor in Ours fails with *InTheWayError,
	// before anything is changed.
	Replace bool
	// Ours lists close-on-exec fds of the caller that may sit in the
	// target range and be overwritten (they would go at exec anyway).
	Ours []int
}

// InTheWayError is the error of Place and CheckFree for a target fd that
// is open and not the caller's to overwrite.
type InTheWayError struct {
	FD   int
	What string // what FD is open to, as /proc/self/fd shows it
}

func (e *InTheWayError) Error() string {
	return fmt.Sprintf("fd %d is open (%s) where fds are to be placed", e.FD, e.What)
}

// Place puts the descriptors src on first, first+1, ... without
// close-on-exec, for a program about to be exec'd; it changes the
// close-on-exec flag of no other fd. A source may sit on any target
// number, its own or another's: every source is first copied above the
// range, so none is overwritten before it is copied. The copies are
// closed again; the sources stay open and the caller keeps them.
//
// Without opts.Replace, every open target must be a source or in
// opts.Ours, or be one of the Go runtime's cgroup limit files (read with
// pread, which fails harmlessly on a socket until exec closes them);
// else Place fails with *InTheWayError and changes nothing. The caller
// must not have started Go's netpoller when a target could hold its
// epoll fd: with Replace, Place would overwrite it.
func Place(first int, src []int, opts PlaceOptions) error {
	top := first + len(src)
	if !opts.Replace {
		if err := CheckFree(first, len(src), append(slices.Clone(opts.Ours), src...)...); err != nil {
			return err
		}
	}
	high := make([]int, 0, len(src))
	defer func() {
		for _, h := range high {
			unix.Close(h)
		}
	}()
	for _, fd := range src {
		h, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, top)
		if err != nil {
			return os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", err)
		}
		high = append(high, h)
	}
	for i, h := range high {
		if err := unix.Dup3(h, first+i, 0); err != nil {
			return os.NewSyscallError("dup3", err)
		}
	}
	return nil
}

// CheckFree returns an *InTheWayError for the first fd from first to
// first+n-1 that is open, unless it is in ours or is one of the Go
// runtime's cgroup limit files (see Place).
func CheckFree(first, n int, ours ...int) error {
	for fd := first; fd < first+n; fd++ {
		if slices.Contains(ours, fd) {
			continue
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			continue // EBADF: free
		}
		what, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
		if err != nil {
			what = "unknown: " + err.Error()
		}
		if strings.HasPrefix(what, "/sys/fs/cgroup/") {
			continue
		}
		return &InTheWayError{FD: fd, What: what}
	}
	return nil
}
