package ipc

import (
	"net"
	"os"

	"github.com/porter-ipc/porter/internal/sockpath"
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
	path string
	id   sockpath.FileID
}

// Path returns the path the listener is bound to, as given to Listen.
func (l *Listener) Path() string { return l.path }

// Close stops listening and removes the socket file, if it is still the
// one Listen created (a newer server may have replaced it).
func (l *Listener) Close() error {
	err := l.UnixListener.Close()
	if l.id.Is(l.path) {
		os.Remove(l.path)
	}
	return err
}

// Listen binds a SOCK_STREAM Unix socket to path and listens on it. An
// existing socket file at path is replaced only when it is stale (connect
// is refused); errors are *net.OpError with the errno (EADDRINUSE for a
// live server or a file that is not a socket, which is never removed).
// Unless cfg.NoReplace, it holds s6's lock on PATH.lock meanwhile (see
// internal/sockpath.Lock): EBUSY when another porter or s6 server is binding path at
// that moment.
func Listen(path string, cfg *ListenConfig) (*Listener, error) {
	if cfg == nil {
		cfg = &ListenConfig{}
	}
	perm := cfg.Perm
	if perm == 0 {
		perm = DefaultPerm
	}
	ul, id, err := sockpath.ListenWith("unix", path, sockpath.Options{Perm: perm, Backlog: cfg.Backlog, NoReplace: cfg.NoReplace})
	if err != nil {
		return nil, err
	}
	return &Listener{UnixListener: ul, path: path, id: id}, nil
}
