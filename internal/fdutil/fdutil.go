// Package fdutil holds small descriptor helpers that porter's packages
// share but that are not part of any public API: there, an fd is an
// *os.File or a type with Close, never a raw int.
package fdutil

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Control calls fn with s's descriptor and returns fn's error, or the
// error of reaching the descriptor (s is closed, or a nil *os.File:
// os.ErrInvalid). Unlike (*os.File).Fd it leaves the shared
// file description's blocking mode alone, and s cannot be closed while fn
// runs. fn must not keep fd.
func Control(s syscall.Conn, fn func(fd int) error) error {
	rc, err := s.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// Number returns s's descriptor number, as Control sees it. s keeps the
// descriptor: the number is valid only while s is open, so it is for a
// caller that names or places the fd (before exec, in a test), not for
// I/O. (*os.File).Fd would give the same number but switch the file
// description to blocking mode.
func Number(s syscall.Conn) (int, error) {
	n := -1
	err := Control(s, func(fd int) error { n = fd; return nil })
	return n, err
}

// DupCloexec returns a close-on-exec duplicate of s's descriptor, owned by
// the caller. Unlike (*os.File).Fd it leaves the shared file description's
// blocking mode alone.
func DupCloexec(s syscall.Conn) (int, error) {
	nfd := -1
	err := Control(s, func(fd int) error {
		var err error
		if nfd, err = unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0); err != nil {
			return os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", err)
		}
		return nil
	})
	return nfd, err
}
