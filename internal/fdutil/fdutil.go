// Package fdutil holds small descriptor helpers that porter's packages
// share but that are not part of any public API: there, an fd is an
// *os.File or a type with Close, never a raw int.
package fdutil

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// DupCloexec returns a close-on-exec duplicate of s's descriptor, owned by
// the caller. Unlike (*os.File).Fd it leaves the shared file description's
// blocking mode alone.
func DupCloexec(s syscall.Conn) (int, error) {
	rc, err := s.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd, derr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", derr)
	}
	return nfd, nil
}
