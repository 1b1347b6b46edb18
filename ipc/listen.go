package ipc

import (
	"errors"
	"fmt"
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
// live server or a non-socket file at path).
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
