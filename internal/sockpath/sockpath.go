// Package sockpath binds listening Unix sockets at file system paths, the
// one place porter decides what may be replaced there: the broker's
// control socket (porter up) and ipc's servers both use it.
//
// Only a stale socket, one that no server listens on any more, is ever
// removed. A live socket is EADDRINUSE ("already listening"); anything
// that is not a socket (a regular file, a directory, a FIFO...) is refused
// with an error naming what is there, and never removed: connect(2) to a
// regular file also says ECONNREFUSED, so "refused" alone does not mean
// stale. While it decides and binds, Listen holds s6's lock on PATH.lock,
// so two servers (porter or s6) never replace the same file at once.
package sockpath

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Options says how ListenWith creates the socket.
type Options struct {
	// Perm is the socket file's permissions (only the permission bits
	// count), set after bind(2) and before listen(2), so no client
	// connects while they are wider.
	Perm os.FileMode
	// Backlog is listen(2)'s backlog; zero or less means SOMAXCONN.
	Backlog int
	// NoReplace refuses any existing file at the path, stale sockets
	// included (s6's -D); no lock is taken then.
	NoReplace bool
}

// FileID names the socket file a listener created: its device and inode.
// A caller that removes the file at exit checks it is still this one (a
// newer server may have replaced it).
type FileID struct{ Dev, Ino uint64 }

// Is reports whether the file at path is still the one id names.
func (id FileID) Is(path string) bool {
	now, err := Identify(path)
	return err == nil && now == id
}

// Identify returns the identity of the file at path, not following a
// symlink.
func Identify(path string) (FileID, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return FileID{}, &fs.PathError{Op: "lstat", Path: path, Err: err}
	}
	return FileID{Dev: uint64(st.Dev), Ino: st.Ino}, nil
}

// Listen binds a Unix socket of network "unix" (SOCK_STREAM) or
// "unixpacket" (SOCK_SEQPACKET) at path, sets its permissions to perm and
// listens with the kernel's maximum backlog; a stale socket at path is
// replaced. The listener does not remove the file when closed. Errors are
// *net.OpError with the path and the errno.
func Listen(network, path string, perm os.FileMode) (*net.UnixListener, error) {
	l, _, err := ListenWith(network, path, Options{Perm: perm})
	return l, err
}

// ListenWith is Listen with options; it also returns the identity of the
// socket file it created.
func ListenWith(network, path string, o Options) (*net.UnixListener, FileID, error) {
	opErr := func(op string, err error) error {
		return &net.OpError{Op: op, Net: network, Addr: &net.UnixAddr{Name: path, Net: network}, Err: err}
	}
	var typ int
	switch network {
	case "unix":
		typ = unix.SOCK_STREAM
	case "unixpacket":
		typ = unix.SOCK_SEQPACKET
	default:
		return nil, FileID{}, opErr("listen", net.UnknownNetworkError(network))
	}
	fd, err := unix.Socket(unix.AF_UNIX, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, FileID{}, opErr("socket", os.NewSyscallError("socket", err))
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	if !o.NoReplace {
		unlock, err := Lock(path)
		if err != nil {
			if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EROFS) {
				// Nothing can be changed here by us; say what is in
				// the way rather than what the lock file is.
				if derr := check(path, typ, cannotReplace, err); derr != nil {
					return nil, FileID{}, opErr("bind", derr)
				}
			}
			return nil, FileID{}, opErr("bind", err)
		}
		defer unlock()
	}
	sa := &unix.SockaddrUnix{Name: path}
	for attempt := 0; ; attempt++ {
		err = unix.Bind(fd, sa)
		if err != unix.EADDRINUSE || attempt > 0 {
			break
		}
		act := replaceStale
		if o.NoReplace {
			act = refuseStale
		}
		if cerr := check(path, typ, act, nil); cerr != nil {
			return nil, FileID{}, opErr("bind", cerr)
		}
		if o.NoReplace {
			break
		}
	}
	if err != nil {
		return nil, FileID{}, opErr("bind", os.NewSyscallError("bind", err))
	}
	defer func() {
		if !ok {
			os.Remove(path)
		}
	}()
	id, err := chmodSocket(path, o.Perm.Perm())
	if err != nil {
		return nil, FileID{}, opErr("chmod", err)
	}
	backlog := o.Backlog
	if backlog <= 0 {
		backlog = unix.SOMAXCONN
	}
	if err := unix.Listen(fd, backlog); err != nil {
		return nil, FileID{}, opErr("listen", os.NewSyscallError("listen", err))
	}
	f := os.NewFile(uintptr(fd), path)
	ln, err := net.FileListener(f)
	f.Close() // FileListener made its own copy; this closes fd
	if err != nil {
		ok = true // fd is closed; the deferred Remove would not run
		os.Remove(path)
		return nil, FileID{}, opErr("listen", err)
	}
	ok = true
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	return ul, id, nil
}

// chmodSocket sets the permissions of the socket file just bound at path
// without following a symlink: whoever may write the directory could
// have put one there in place of the socket, and chmod(2) would then
// change the link's target. It opens path with O_PATH|O_NOFOLLOW, checks
// that a socket is what it got, and changes that inode through
// /proc/self/fd. It returns the socket file's identity.
func chmodSocket(path string, perm os.FileMode) (FileID, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return FileID{}, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return FileID{}, &fs.PathError{Op: "fstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return FileID{}, &fs.PathError{Op: "chmod", Path: path, Err: fmt.Errorf("replaced by %s after bind: %w", kind(st.Mode), unix.ENOTSOCK)}
	}
	if err := unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), uint32(perm)); err != nil {
		return FileID{}, &fs.PathError{Op: "chmod", Path: path, Err: err}
	}
	return FileID{Dev: uint64(st.Dev), Ino: st.Ino}, nil
}

// Lock takes the lock s6 takes while it replaces and binds a socket: an
// exclusive record lock on PATH.lock (created 0600 if need be), tried
// once. It is an open-file-description lock, which conflicts with s6's
// fcntl lock and also with another Lock in this process. Like s6, the
// caller holds it only until it listens, and PATH.lock is left in place
// (removing a lock file others may be locking is not safe). A lock held
// elsewhere is EBUSY.
func Lock(path string) (unlock func(), err error) {
	name := path + ".lock"
	// Never through a symlink, and only a plain file of one link: a
	// directory whose owner is less privileged than the caller (root)
	// must not make it open or create something elsewhere.
	fd, err := unix.Open(name, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_NOCTTY|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Nlink != 1 {
		unix.Close(fd)
		if err == nil {
			err = fmt.Errorf("not a plain file of one link (%s, %d links): %w", kind(st.Mode), st.Nlink, unix.EINVAL)
		}
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart}
	for {
		err = unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		if err == unix.EAGAIN || err == unix.EACCES {
			return nil, fmt.Errorf("%s is locked: another server is binding %s: %w", name, path, syscall.EBUSY)
		}
		return nil, &fs.PathError{Op: "lock", Path: name, Err: err}
	}
	return func() { unix.Close(fd) }, nil
}

// What check does with a stale socket.
const (
	replaceStale  = iota // remove it
	refuseStale          // refuse it: NoReplace
	cannotReplace        // refuse it: we may not (why is in the error passed)
)

// check looks at what is at path. A live socket and anything that is not
// a socket are errors; a stale socket is removed or refused as act says.
// nil means path is free now.
func check(path string, typ, act int, why error) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		if err == unix.ENOENT {
			return nil // gone meanwhile: bind again
		}
		return &fs.PathError{Op: "lstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("%s is %s, not a socket; porter will not remove it: %w", path, kind(st.Mode), syscall.EADDRINUSE)
	}
	live, err := probe(path, typ)
	if errors.Is(err, unix.EACCES) {
		return fmt.Errorf("a socket is at %s, owned by uid %d with mode %#o, which uid %d may not connect to (to see whether a server listens on it): remove it if it is stale, or run as uid %d or root: %w",
			path, st.Uid, st.Mode&0o777, os.Geteuid(), st.Uid, err)
	}
	if err != nil {
		return err
	}
	if live {
		return fmt.Errorf("a server is already listening on %s: %w", path, syscall.EADDRINUSE)
	}
	switch act {
	case refuseStale:
		return fmt.Errorf("a stale socket (no server listens on it) is at %s and replacing is off: %w", path, syscall.EADDRINUSE)
	case replaceStale:
		err := unix.Unlink(path)
		if err == nil || err == unix.ENOENT {
			return nil
		}
		if err != unix.EACCES && err != unix.EPERM && err != unix.EROFS {
			return &fs.PathError{Op: "unlink", Path: path, Err: err}
		}
		why = &fs.PathError{Op: "unlink", Path: path, Err: err}
	}
	return fmt.Errorf("a stale socket (no server listens on it) is at %s, owned by uid %d, which uid %d cannot replace: remove it, or run as uid %d or root: %w",
		path, st.Uid, os.Geteuid(), st.Uid, why)
}

// kind names a file type for an error message.
func kind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "a regular file"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFLNK:
		return "a symbolic link"
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	}
	return fmt.Sprintf("a file of type %#o", mode&unix.S_IFMT)
}

// probe connects to path without blocking: refused means stale. A socket
// of another type (EPROTOTYPE) is someone else's live socket.
func probe(path string, typ int) (live bool, err error) {
	fd, err := unix.Socket(unix.AF_UNIX, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, os.NewSyscallError("socket", err)
	}
	defer unix.Close(fd)
	for {
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
		if err != unix.EINTR {
			break
		}
	}
	switch err {
	case nil, unix.EAGAIN, unix.EINPROGRESS, unix.EPROTOTYPE:
		return true, nil // accepted, or the backlog is full: someone listens
	case unix.ECONNREFUSED, unix.ENOENT:
		return false, nil
	}
	return false, &fs.PathError{Op: "connect", Path: path, Err: err}
}
