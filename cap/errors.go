package cap

import (
	"strconv"
)

// Code is an error's kind: codes 1–7 travel in ERROR frames; the others
// are local, reported by the library and never sent.
type Code uint32

// Error codes of the protocol (docs/protocol-cap.md, "Errors").
const (
	UnknownMethod Code = 1 // the object has no method by that name
	BadArgs       Code = 2 // the body does not decode, or not into the method's argument type
	Application   Code = 3 // the method returned an error; Msg is its text
	Revoked       Code = 4 // the object was revoked
	TooLarge      Code = 5 // the frame would not fit MaxFrame or MaxFDs
	Overloaded    Code = 6 // the session had MaxCalls calls running; retry
	Internal      Code = 7 // the server failed; nothing was done

	ServerGone Code = 1001 // the server died or closed the session
	Gone       Code = 1002 // the door refuses: the object is revoked or its server gone
	FDLimit    Code = 1003 // fds in flight or the fd table stayed full until the deadline
	Timeout    Code = 1004 // the context ended; a CANCEL was sent
	Closed     Code = 1005 // the Ref was closed by this process
	Protocol   Code = 1006 // the peer broke the protocol
)

var codeNames = map[Code]string{
	UnknownMethod: "UNKNOWN_METHOD", BadArgs: "BAD_ARGS", Application: "APPLICATION",
	Revoked: "REVOKED", TooLarge: "TOO_LARGE", Overloaded: "OVERLOADED", Internal: "INTERNAL",
	ServerGone: "SERVER_GONE", Gone: "GONE", FDLimit: "FD_LIMIT", Timeout: "TIMEOUT",
	Closed: "CLOSED", Protocol: "PROTOCOL",
}

// String returns the code's name as the protocol spells it.
func (c Code) String() string {
	if n, ok := codeNames[c]; ok {
		return n
	}
	return "CODE_" + strconv.FormatUint(uint64(c), 10)
}

// Sentinels: errors.Is(err, cap.ErrRevoked) holds for every *Error whose
// Code is Revoked, and so on.
var (
	ErrUnknownMethod = &Error{Code: UnknownMethod}
	ErrBadArgs       = &Error{Code: BadArgs}
	ErrApplication   = &Error{Code: Application}
	ErrRevoked       = &Error{Code: Revoked}
	ErrTooLarge      = &Error{Code: TooLarge}
	ErrOverloaded    = &Error{Code: Overloaded}
	ErrInternal      = &Error{Code: Internal}
	ErrServerGone    = &Error{Code: ServerGone}
	ErrGone          = &Error{Code: Gone}
	ErrFDLimit       = &Error{Code: FDLimit}
	ErrTimeout       = &Error{Code: Timeout}
	ErrClosed        = &Error{Code: Closed}
	ErrProtocol      = &Error{Code: Protocol}
)

// Error is the error of a call, or of a Ref: what went wrong (Code), on
// which method, the server's text (Msg) and the local cause (Err: an
// errno, a context error, a decoding error), which errors.Is and
// errors.As reach through Unwrap.
type Error struct {
	Code   Code
	Method string // the method called, when there was one
	Msg    string // APPLICATION: the method's error text; else the server's or the library's detail
	Err    error  // the local cause, or nil
}

// Error names the method, the code and the detail.
func (e *Error) Error() string {
	s := "cap: "
	if e.Method != "" {
		s += e.Method + ": "
	}
	s += e.Code.String()
	if e.Msg != "" {
		s += ": " + e.Msg
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the local cause.
func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, cap.ErrX) hold for every *Error with X's code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code && t.Method == "" && t.Msg == "" && t.Err == nil
}
