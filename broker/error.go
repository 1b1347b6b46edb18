package broker

import (
	"fmt"
	"net/netip"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Code says what went wrong, in an ERROR message.
type Code uint16

// Error codes. Fatal ones (CodeMalformed, CodeVersion, CodeTooLarge,
// CodeShuttingDown) are followed by the broker closing the connection.
const (
	CodeMalformed    Code = 1  // the message's structure is wrong (fatal)
	CodeVersion      Code = 2  // unsupported protocol version (fatal)
	CodeTooLarge     Code = 3  // message longer than MaxMessage (fatal)
	CodeInvalid      Code = 4  // a field has an invalid value
	CodeConflict     Code = 5  // the socket is held under incompatible share modes
	CodeDenied       Code = 6  // the policy (by default the rules) does not allow this peer this socket
	CodeQuota        Code = 7  // a per-uid quota is exhausted
	CodeNoToken      Code = 8  // no such token: unknown, expired, or already picked up
	CodeNotYours     Code = 9  // the token belongs to another uid
	CodeCreate       Code = 10 // the creator could not create or bind the socket (errno set)
	CodeCreatorGone  Code = 11 // the creator is not running: no new sockets
	CodeInternal     Code = 12 // the broker failed (errno set)
	CodeNotHeld      Code = 13 // release by fd: this connection holds no such socket
	CodeShuttingDown Code = 14 // the broker is stopping (fatal: it closes every connection)
)

var codeNames = map[Code]string{
	CodeMalformed: "malformed message", CodeVersion: "unsupported version",
	CodeTooLarge: "message too large", CodeInvalid: "invalid request",
	CodeConflict: "share conflict", CodeDenied: "denied by policy",
	CodeQuota: "quota exceeded", CodeNoToken: "no such token",
	CodeNotYours: "token not yours", CodeCreate: "creator failed",
	CodeCreatorGone: "creator gone", CodeInternal: "broker failure",
	CodeNotHeld: "socket not held", CodeShuttingDown: "broker shutting down",
}

// String describes the code in a few words, as error messages show it.
func (c Code) String() string {
	if s, ok := codeNames[c]; ok {
		return s
	}
	return fmt.Sprintf("code %d", uint16(c))
}

// Fatal reports whether the broker closes the connection after this error.
func (c Code) Fatal() bool {
	return c == CodeMalformed || c == CodeVersion || c == CodeTooLarge || c == CodeShuttingDown
}

// Error is an error reply from the broker (or the client's own check of a
// request before sending it). errors.Is matches it against the sentinels
// below by Code, and against its Errno.
type Error struct {
	Op    string         // "request", "pickup", "release", "list", ...
	Addr  netip.AddrPort // the socket concerned, when there is one
	Proto Proto          // its protocol, when there is one
	Code  Code
	Errno syscall.Errno // the errno behind it, 0 if none
	Text  string        // the broker's explanation
}

// Error names the operation, the socket, the code, the errno and the
// broker's text.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("porter broker: ")
	if e.Op != "" {
		b.WriteString(e.Op)
	}
	if e.Addr.IsValid() {
		if e.Op != "" {
			b.WriteString(" ")
		}
		if e.Proto != 0 {
			b.WriteString(e.Proto.String() + "://")
		}
		b.WriteString(e.Addr.String())
	}
	if e.Op != "" || e.Addr.IsValid() {
		b.WriteString(": ")
	}
	b.WriteString(e.Code.String())
	if e.Text != "" {
		b.WriteString(": ")
		b.WriteString(e.Text)
	}
	return b.String()
}

// Unwrap returns the errno, so errors.Is(err, unix.EADDRINUSE) works.
func (e *Error) Unwrap() error {
	if e.Errno == 0 {
		return nil
	}
	return e.Errno
}

// Is matches a sentinel *Error (one with only Code set) by code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Op == "" && t.Text == "" && t.Code == e.Code
}

// Sentinels for errors.Is, one per code.
var (
	ErrMalformed    = &Error{Code: CodeMalformed}
	ErrVersion      = &Error{Code: CodeVersion}
	ErrTooLarge     = &Error{Code: CodeTooLarge}
	ErrInvalid      = &Error{Code: CodeInvalid}
	ErrConflict     = &Error{Code: CodeConflict}
	ErrDenied       = &Error{Code: CodeDenied}
	ErrQuota        = &Error{Code: CodeQuota}
	ErrNoToken      = &Error{Code: CodeNoToken}
	ErrNotYours     = &Error{Code: CodeNotYours}
	ErrCreate       = &Error{Code: CodeCreate}
	ErrCreatorGone  = &Error{Code: CodeCreatorGone}
	ErrInternal     = &Error{Code: CodeInternal}
	ErrNotHeld      = &Error{Code: CodeNotHeld}
	ErrShuttingDown = &Error{Code: CodeShuttingDown}
)

// defaultErrno is the errno each code carries when no other applies.
func defaultErrno(c Code) syscall.Errno {
	switch c {
	case CodeMalformed:
		return unix.EPROTO
	case CodeVersion:
		return unix.EPROTONOSUPPORT
	case CodeTooLarge:
		return unix.EMSGSIZE
	case CodeInvalid:
		return unix.EINVAL
	case CodeConflict:
		return unix.EADDRINUSE
	case CodeDenied:
		return unix.EACCES
	case CodeQuota:
		return unix.EDQUOT
	case CodeNoToken:
		return unix.ENOENT
	case CodeNotYours:
		return unix.EPERM
	case CodeCreatorGone:
		return unix.EHOSTDOWN
	case CodeNotHeld:
		return unix.EBADF
	case CodeShuttingDown:
		return unix.ESHUTDOWN
	}
	return 0
}
