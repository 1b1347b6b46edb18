package ipc

import "net"

// OpError is the error of an ipc operation that fails in ipc itself, in
// the manner of *net.OpError: the operation, the socket's path when it
// has one, and the cause, which errors.Is and errors.As reach (the errno
// among them). Errors of the layers below (fdpass, net) are returned as
// they come.
type OpError struct {
	Op   string // the operation, such as "offer channel"
	Path string // the connection's socket path, or ""
	Err  error  // the cause
}

// Error names ipc, the operation, the path and the cause.
func (e *OpError) Error() string {
	s := "ipc: " + e.Op
	if e.Path != "" {
		s += " " + e.Path
	}
	return s + ": " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *OpError) Unwrap() error { return e.Err }

// path names c's socket for errors: the server's path, on either end,
// when there is one.
func (c *Conn) path() string {
	for _, a := range []net.Addr{c.uc.LocalAddr(), c.uc.RemoteAddr()} {
		if ua, ok := a.(*net.UnixAddr); ok && ua != nil && ua.Name != "" && ua.Name != "@" {
			return ua.Name
		}
	}
	return ""
}
