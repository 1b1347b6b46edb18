package fdpass

import (
	"errors"
	"syscall"

	"golang.org/x/sys/unix"
)

// Sentinel errors. Every error returned by this package is an *OpError whose
// Unwrap yields one of these (where one applies) and the errno, so both
// errors.Is(err, fdpass.ErrTooManyRefs) and errors.Is(err, unix.ETOOMANYREFS)
// hold.
var (
	// ErrTooManyRefs: sendmsg failed with ETOOMANYREFS. The sending user
	// has more fds in flight (sent, not yet received) than its
	// RLIMIT_NOFILE allows. Nothing was sent; retry once the peer has
	// received some, or raise the limit.
	ErrTooManyRefs = errors.New("too many fds in flight (ETOOMANYREFS)")

	// ErrFDLimit: the process (EMFILE) or the system (ENFILE) is out of
	// fds. On receive the message's data was consumed and every fd that
	// did arrive was closed; the connection's framing is lost. The kernel
	// reports only MSG_CTRUNC then, so Recv tells EMFILE from ENFILE by
	// trying to make one more fd; the errno is missing when that worked.
	ErrFDLimit = errors.New("out of file descriptors (EMFILE/ENFILE)")

	// ErrWouldBlock: EAGAIN on a socket that Go's netpoller cannot wait
	// on (a non-blocking fd that is not registered with it). Nothing was
	// received, and nothing sent on a packet socket; retry later. On a
	// stream socket Send returns the bytes it did write (fds go with the
	// first): retry with the rest, or close the stream.
	ErrWouldBlock = errors.New("operation would block (EAGAIN)")

	// ErrTruncated: the message did not fit. Either its data was longer
	// than the buffer (MSG_TRUNC, packet sockets) or it carried more fds
	// than the caller allowed (MSG_CTRUNC, or more than maxFDs). Every fd
	// that arrived was closed.
	ErrTruncated = errors.New("message truncated")

	// ErrTooManyFDs: a packet socket (SOCK_SEQPACKET, SOCK_DGRAM) cannot
	// carry more than MaxFDsPerMessage fds in one message, and splitting
	// would break the message boundary. Nothing was sent.
	ErrTooManyFDs = errors.New("too many fds for one message")

	// ErrNeedData: fds must travel with at least one byte of data.
	ErrNeedData = errors.New("fds need at least one byte of data to travel with")
)

// OpError is the error type of this package, in the manner of *net.OpError:
// the operation, the socket's address when it has one, and the cause.
type OpError struct {
	Op   string // the operation: "sendmsg", "recvmsg", "getsockopt", ...
	Addr string // the socket's local or peer path, or "" (socketpairs)
	Kind error  // one of the package's sentinel errors, or nil
	Err  error  // the underlying cause, usually a syscall.Errno; may be nil
}

// Error names the operation, the socket, the kind and the cause.
func (e *OpError) Error() string {
	s := "fdpass: " + e.Op
	if e.Addr != "" {
		s += " " + e.Addr
	}
	switch {
	case e.Kind != nil && e.Err != nil:
		return s + ": " + e.Kind.Error() + ": " + e.Err.Error()
	case e.Kind != nil:
		return s + ": " + e.Kind.Error()
	case e.Err != nil:
		return s + ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the sentinel kind and the cause, for errors.Is and errors.As.
func (e *OpError) Unwrap() []error {
	var errs []error
	if e.Kind != nil {
		errs = append(errs, e.Kind)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

// Retryable reports whether err is a shortage that goes away by itself
// (ETOOMANYREFS, EMFILE/ENFILE, EAGAIN), so that a caller may wait and try
// again instead of failing.
func Retryable(err error) bool {
	return errors.Is(err, ErrTooManyRefs) || errors.Is(err, ErrFDLimit) || errors.Is(err, ErrWouldBlock)
}

// kindOf maps an errno to the package's sentinel for it, or nil.
func kindOf(err error) error {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return nil
	}
	switch errno {
	case unix.ETOOMANYREFS:
		return ErrTooManyRefs
	case unix.EMFILE, unix.ENFILE:
		return ErrFDLimit
	case unix.EAGAIN:
		return ErrWouldBlock
	}
	return nil
}
