package ipc

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// DefaultPerm is the socket's permissions when ListenConfig.Perm has none:
// everyone may connect, as with s6-ipcserver; access rules decide.
const DefaultPerm os.FileMode = 0o777

// ListenConfig says how Listen creates the socket.
type ListenConfig struct {
	// Perm is the socket file's permissions, set after bind(2) and
	// before listen(2), so no client connects while they are wider.
	// Only the permission bits count; zero means DefaultPerm. For 0000
	// (root only) set a non-permission bit, such as os.ModeSocket.
	Perm os.FileMode
	// Backlog is listen(2)'s backlog; zero means the kernel's maximum.
	Backlog int
	// NoReplace refuses any existing file at the path (s6's -D).
	// Otherwise a stale socket, one no server listens on any more, is
	// replaced; a live socket and a file that is not a socket never are.
	NoReplace bool
}

// Listener is a listening Unix stream socket bound to a path.
type Listener struct {
	*net.UnixListener
	path     string
	dev, ino uint64
}

// Path returns the path the listener is bound to, as given to Listen.
func (l *Listener) Path() string { return l.path }

// Close stops listening and removes the socket file, if it is still the
// one Listen created (a newer server may have replaced it).
func (l *Listener) Close() error {
	err := l.UnixListener.Close()
	var st unix.Stat_t
	if unix.Lstat(l.path, &st) == nil && st.Dev == l.dev && st.Ino == l.ino {
		os.Remove(l.path)
	}
	return err
}

// Listen binds a SOCK_STREAM Unix socket to path and listens on it. An
// existing socket file at path is replaced only when it is stale (connect
// is refused); errors are *net.OpError with the errno (EADDRINUSE for a
// live server or a non-socket file at path). Unless cfg.NoReplace, it
// holds s6's lock on PATH.lock meanwhile (see lockBind): EBUSY when
// another porter or s6 server is binding path at that moment.
func Listen(path string, cfg *ListenConfig) (*Listener, error) {
	if cfg == nil {
		cfg = &ListenConfig{}
	}
	opErr := func(op string, err error) error {
		return &net.OpError{Op: op, Net: "unix", Addr: &net.UnixAddr{Name: path, Net: "unix"}, Err: err}
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, opErr("socket", os.NewSyscallError("socket", err))
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	if !cfg.NoReplace {
		unlock, err := lockBind(path)
		if err != nil {
			return nil, opErr("bind", err)
		}
		defer unlock()
	}
	sa := &unix.SockaddrUnix{Name: path}
	for attempt := 0; ; attempt++ {
		err = unix.Bind(fd, sa)
		if err != unix.EADDRINUSE || cfg.NoReplace || attempt > 0 {
			break
		}
		if rerr := removeStale(path); rerr != nil {
			return nil, opErr("bind", rerr)
		}
	}
	if err != nil {
		return nil, opErr("bind", os.NewSyscallError("bind", err))
	}
	bound := true
	defer func() {
		if !ok && bound {
			os.Remove(path)
		}
	}()
	perm := cfg.Perm
	if perm == 0 {
		perm = DefaultPerm
	}
	if err := os.Chmod(path, perm.Perm()); err != nil {
		return nil, opErr("chmod", err)
	}
	backlog := cfg.Backlog
	if backlog <= 0 {
		backlog = unix.SOMAXCONN
	}
	if err := unix.Listen(fd, backlog); err != nil {
		return nil, opErr("listen", os.NewSyscallError("listen", err))
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return nil, opErr("stat", &fs.PathError{Op: "lstat", Path: path, Err: err})
	}
	f := os.NewFile(uintptr(fd), path)
	ln, err := net.FileListener(f)
	f.Close() // FileListener made its own copy; closes fd
	ok = true // fd is closed either way now
	if err != nil {
		os.Remove(path)
		return nil, opErr("listen", err)
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false) // Close removes the file only if still ours
	return &Listener{UnixListener: ul, path: path, dev: uint64(st.Dev), ino: st.Ino}, nil
}

// lockBind takes the lock s6 takes while it replaces and binds a socket:
// an exclusive record lock on PATH.lock (created 0600 if need be), tried
// once. It is an open-file-description lock, which conflicts with s6's
// fcntl lock and also with another Listen of this process. While it is
// held no other porter or s6 server replaces the file at path, so a
// stale socket is not removed twice, nor a fresh one by mistake. Like s6,
// porter holds it only until it listens, and leaves PATH.lock in place
// (removing a lock file others may be locking is not safe). A lock held
// elsewhere is EBUSY.
func lockBind(path string) (unlock func(), err error) {
	name := path + ".lock"
	fd, err := unix.Open(name, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
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

// removeStale removes the socket file at path if no server listens on it.
func removeStale(path string) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		if err == unix.ENOENT {
			return nil // gone meanwhile: bind again
		}
		return &fs.PathError{Op: "lstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("%s exists and is not a socket, not replacing it: %w", path, syscall.EADDRINUSE)
	}
	live, err := probe(path)
	if err != nil {
		return err
	}
	if live {
		return fmt.Errorf("a server is listening on %s: %w", path, syscall.EADDRINUSE)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// probe connects to path without blocking: refused means stale.
func probe(path string) (live bool, err error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
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
	case nil, unix.EAGAIN, unix.EINPROGRESS:
		return true, nil // accepted, or the backlog is full: someone listens
	case unix.ECONNREFUSED, unix.ENOENT:
		return false, nil
	}
	return false, &fs.PathError{Op: "connect", Path: path, Err: err}
}
