package bus

import (
	"errors"
	"fmt"
	"syscall"
)

// Code is an error code of the protocol: what a FAIL frame carries, and
// what an ERROR frame on a channel names (docs/protocol-bus.md, "Errors").
type Code uint16

// The protocol's error codes (docs/protocol-bus.md, "Errors").
const (
	CodeMalformed       Code = 1  // wrong lengths, unknown or misplaced type, bad field layout (fatal)
	CodeVersion         Code = 2  // version byte not 1 (fatal)
	CodeTooLarge        Code = 3  // frame, fields or fd count above its limit (fatal)
	CodeNotJoined       Code = 4  // first frame not HELLO, or a second HELLO (fatal)
	CodeCredMismatch    Code = 5  // HELLO's credentials missing or not SO_PEERCRED's (fatal)
	CodeDenied          Code = 6  // the policy refused, or a reserved name (fatal for HELLO)
	CodeInvalid         Code = 7  // a well-formed frame with a bad value
	CodeUnknownAddress  Code = 8  // no endpoint has that address
	CodeNameHasNoOwner  Code = 9  // nobody owns the name
	CodeBadSource       Code = 10 // source is not an address of the sender
	CodeQuota           Code = 11 // a count limit is reached
	CodeQueueFull       Code = 12 // a queue share or the pending calls are used up (retry)
	CodeFdsRefused      Code = 13 // fds or a memfd to an endpoint that does not accept them
	CodeFDLimit         Code = 14 // no fd free, or too many in flight (retry)
	CodeBadMemfd        Code = 15 // a memfd not sealed or sized as the frame says
	CodeBadBloom        Code = 16 // a bloom of the wrong size or content
	CodeUnexpectedReply Code = 17 // a routed REPLY or ERROR with no open reply slot
	CodePeerGone        Code = 18 // the callee left, died or closed the channel
	CodeNameMoved       Code = 19 // DEST_NAME is not owned by the destination address
	CodeNotFound        Code = 20 // no such match cookie, channel, or address of yours
	CodeUnknownField    Code = 21 // a critical field the receiver does not know
	CodeExpelled        Code = 22 // the endpoint's queue stayed full too long (fatal)
	CodeShuttingDown    Code = 23 // the master is stopping (fatal)
	CodeInternal        Code = 24 // the master failed; nothing changed
	CodeRevoked         Code = 30 // the channel was revoked with the call pending (local)
	CodeTimeout         Code = 31 // the caller's deadline passed (local)
)

// codeInfo is one row of the Errors table.
type codeInfo struct {
	name  string        // the doc's name, e.g. "FDS_REFUSED"
	camel string        // the ERROR_NAME suffix, e.g. "FdsRefused"
	errno syscall.Errno // the errno the code maps to
	fatal bool          // the connection (or channel) is closed after it
	local bool          // only a library synthesises it
}

var codes = map[Code]codeInfo{
	CodeMalformed:       {"MALFORMED", "Malformed", syscall.EPROTO, true, false},
	CodeVersion:         {"VERSION", "Version", syscall.EPROTONOSUPPORT, true, false},
	CodeTooLarge:        {"TOO_LARGE", "TooLarge", syscall.EMSGSIZE, true, false},
	CodeNotJoined:       {"NOT_JOINED", "NotJoined", syscall.EPROTO, true, false},
	CodeCredMismatch:    {"CRED_MISMATCH", "CredMismatch", syscall.EACCES, true, false},
	CodeDenied:          {"DENIED", "Denied", syscall.EACCES, false, false},
	CodeInvalid:         {"INVALID", "Invalid", syscall.EINVAL, false, false},
	CodeUnknownAddress:  {"UNKNOWN_ADDRESS", "UnknownAddress", syscall.ENXIO, false, false},
	CodeNameHasNoOwner:  {"NAME_HAS_NO_OWNER", "NameHasNoOwner", syscall.ENOENT, false, false},
	CodeBadSource:       {"BAD_SOURCE", "BadSource", syscall.EADDRNOTAVAIL, false, false},
	CodeQuota:           {"QUOTA", "Quota", syscall.EDQUOT, false, false},
	CodeQueueFull:       {"QUEUE_FULL", "QueueFull", syscall.ENOBUFS, false, false},
	CodeFdsRefused:      {"FDS_REFUSED", "FdsRefused", syscall.EOPNOTSUPP, false, false},
	CodeFDLimit:         {"FD_LIMIT", "FdLimit", syscall.EMFILE, false, false},
	CodeBadMemfd:        {"BAD_MEMFD", "BadMemfd", syscall.EBADF, false, false},
	CodeBadBloom:        {"BAD_BLOOM", "BadBloom", syscall.EINVAL, false, false},
	CodeUnexpectedReply: {"UNEXPECTED_REPLY", "UnexpectedReply", syscall.ENOMSG, false, false},
	CodePeerGone:        {"PEER_GONE", "PeerGone", syscall.ECONNRESET, false, false},
	CodeNameMoved:       {"NAME_MOVED", "NameMoved", syscall.ESTALE, false, false},
	CodeNotFound:        {"NOT_FOUND", "NotFound", syscall.ENOENT, false, false},
	CodeUnknownField:    {"UNKNOWN_FIELD", "UnknownField", syscall.EPROTO, false, false},
	CodeExpelled:        {"EXPELLED", "Expelled", syscall.ETIMEDOUT, true, false},
	CodeShuttingDown:    {"SHUTTING_DOWN", "ShuttingDown", syscall.ESHUTDOWN, true, false},
	// INTERNAL's errno "varies" (Errors table): the FAIL carries it; EIO
	// is only the default when there is none.
	CodeInternal: {"INTERNAL", "Internal", syscall.EIO, false, false},
	CodeRevoked:  {"REVOKED", "Revoked", syscall.ECONNABORTED, false, true},
	CodeTimeout:  {"TIMEOUT", "Timeout", syscall.ETIMEDOUT, false, true},
}

// String returns the code's name as the protocol spells it ("FDS_REFUSED").
func (c Code) String() string {
	if i, ok := codes[c]; ok {
		return i.name
	}
	return fmt.Sprintf("code %d", uint16(c))
}

// Known reports whether c is a code of protocol version 1.
func (c Code) Known() bool {
	_, ok := codes[c]
	return ok
}

// Errno is the errno the code maps to (for FD_LIMIT the usual one,
// EMFILE; the FAIL frame carries the actual one).
func (c Code) Errno() syscall.Errno {
	if i, ok := codes[c]; ok {
		return i.errno
	}
	return syscall.EPROTO
}

// Fatal reports whether the connection is closed after this code (on a
// channel: the channel is closed). DENIED and QUOTA are fatal only in
// answer to HELLO, which [Code.FatalFor] tells.
func (c Code) Fatal() bool { return codes[c].fatal }

// FatalFor reports whether c is fatal in answer to a frame of type t:
// as [Code.Fatal], and also DENIED and QUOTA for HELLO.
func (c Code) FatalFor(t Type) bool {
	if t == TypeHello && (c == CodeDenied || c == CodeQuota) {
		return true
	}
	return c.Fatal()
}

// Local reports whether only a library synthesises c (REVOKED, TIMEOUT):
// it never travels in a FAIL.
func (c Code) Local() bool { return codes[c].local }

// ErrorName is the ERROR_NAME an endpoint puts on an ERROR frame that
// reports c on a channel: "porter.Bus.Error." + the name in CamelCase.
func (c Code) ErrorName() string {
	if i, ok := codes[c]; ok {
		return "porter.Bus.Error." + i.camel
	}
	return ""
}

// CodeOfErrorName is the code whose [Code.ErrorName] is name, and whether
// there is one.
func CodeOfErrorName(name string) (Code, bool) {
	for c, i := range codes {
		if "porter.Bus.Error."+i.camel == name {
			return c, true
		}
	}
	return 0, false
}

// Error is a protocol failure: a frame refused by the codec, or a FAIL
// or ERROR from a peer. errors.Is matches it against its Errno and
// against an *Error with the same Code (and no Op).
type Error struct {
	Op    string        // "decode", "encode", "hello", ...: what was being done
	Code  Code          // the protocol's code
	Errno syscall.Errno // the errno behind it; 0 means Code.Errno()
	Text  string        // for people: which field, which limit
}

// errorf builds an *Error for op with code and a formatted text.
func errorf(op string, code Code, format string, args ...any) *Error {
	return &Error{Op: op, Code: code, Text: fmt.Sprintf(format, args...)}
}

// Error reads "bus: OP: CODE: text".
func (e *Error) Error() string {
	s := "bus: "
	if e.Op != "" {
		s += e.Op + ": "
	}
	s += e.Code.String()
	if e.Text != "" {
		s += ": " + e.Text
	}
	return s
}

// Unwrap returns the errno, so errors.Is(err, syscall.EPROTO) works.
func (e *Error) Unwrap() error {
	if e.Errno != 0 {
		return e.Errno
	}
	return e.Code.Errno()
}

// Is matches a target *Error by Code when the target names no Op, or by
// Op and Code when it does: errors.Is(err, &bus.Error{Code: bus.CodeInvalid}).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	return t.Code == e.Code && (t.Op == "" || t.Op == e.Op)
}

// CodeOf returns the protocol code of err, or 0 when err is not a
// protocol *Error.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// errnoOf converts a wire errno to a syscall.Errno.
func errnoOf(n uint32) syscall.Errno { return syscall.Errno(n) }
