package bus

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/porter-ipc/porter/fdpass"
)

// Message is what a CALL, REPLY, ERROR or SIGNAL carries, as the Go API
// sees it.
//
// Ownership of Files follows fdpass: a Message given to Call or Send
// lends its Files (the caller keeps and closes them); a received Message
// (a reply, a Call's, a Notice's) owns its Files and the receiver must
// close them. A reply a Handler returns gives its Files to the endpoint,
// which closes them once the reply is sent (or refused).
//
// Large bodies travel as sealed memfds (docs/protocol-bus.md, "Large
// payloads: sealed memfds"). Sending, a Body at or above the bus's
// memfd_threshold, or too large to go inline, is copied once into a
// sealed memfd; a Payload (NewPayload) is sealed and sent without a copy,
// always as a memfd, and the send consumes it. To a peer that takes no
// memfds (Options.NoMemfd) either is FDS_REFUSED before anything is
// sent. Receiving, such a Body is a read-only mapping of the memfd
// (writing to it faults), not a copy: it is valid until the Message is
// closed. A reply's owner closes it; a Call's mapping is the endpoint's,
// unmapped once the Handler returned and its reply was sent, so a Handler
// that keeps the bytes longer copies them. A Notice's body is a copy (one
// signal may reach several Watchers). Before mapping, the receiver checks
// the memfd's four seals and its size (BAD_MEMFD otherwise), so the
// mapping can neither change nor shrink under it.
type Message struct {
	Path, Interface, Member string
	Signature               string     // D-Bus signature of Body, "" = opaque bytes
	Body                    []byte     // the body; see the type's comment for large ones
	Payload                 *Payload   // sending only: a body built in place (NewPayload), instead of Body
	Files                   []*os.File // see the type's comment for who closes them
	Args                    []Arg      // signals: string arguments published for matching
	Flags                   Flags      // FlagNoReplyExpected …
	ErrorName               string     // ERROR frames only: the error's name

	mapped     []byte   // a received memfd body's mapping (Body), until Close
	sealed     *os.File // sending: the sealed memfd of Payload (data), borrowed
	sealedSize int
}

// Close closes every file in m and forgets them, unmaps a received
// memfd body (Body is then nil) and discards an unsent Payload. A nil m
// is fine.
func (m *Message) Close() error {
	if m == nil {
		return nil
	}
	closeFiles(m.Files)
	m.Files = nil
	m.unmap()
	if m.Payload != nil {
		m.Payload.Close()
		m.Payload = nil
	}
	return nil
}

// Call is an incoming call, as a Handler gets it.
type Call struct {
	*Message
	Sender uint64      // verified source address
	Cred   fdpass.Cred // verified: INTRODUCE on a channel, SENDER_CRED routed
	Names  []string    // the sender's names when introduced (channel); nil routed
	Dest   string      // the name the caller used, "" when it called by address
}

// Handler answers incoming calls. Calls that arrive on one channel are
// handled one at a time, in order, on that channel's reader; calls from
// different peers (different channels) and routed calls run concurrently.
// A Handler returns the reply, or an error: a *CallError is sent as an
// ERROR with its name, a *Error as the ERROR of its code, anything else
// as org.freedesktop.DBus.Error.Failed with the error's text. ctx ends
// when the channel or the endpoint closes. The reply's Files pass to the
// endpoint, which closes them once sent (the send comes after the Handler
// returns, so it could not close them itself); the call's Files are the
// Handler's to close.
type Handler func(ctx context.Context, c *Call) (*Message, error)

// CallError is an ERROR frame with an application error name: what a
// Handler returns to send one, and what Call returns when the peer
// answered with one.
type CallError struct {
	Name string // the error name (an interface-like name)
	Text string // for people: the ERROR's body
}

// Error reads "NAME: text".
func (e *CallError) Error() string {
	if e.Text == "" {
		return e.Name
	}
	return e.Name + ": " + e.Text
}

// ErrorUnknownMethod is the error name an endpoint without a Handler
// answers every call with.
const ErrorUnknownMethod = "org.freedesktop.DBus.Error.UnknownMethod"

// ErrorFailed is the error name of a Handler's error that is neither a
// *CallError nor an *Error.
const ErrorFailed = "org.freedesktop.DBus.Error.Failed"

// dataFrame builds a data frame of type t from m. It sets no addresses
// and no serials.
func (m *Message) dataFrame(t Type, destName string) (*Frame, error) {
	f := &Frame{Type: t, Flags: m.Flags, Body: m.Body, NFDs: uint16(len(m.Files))}
	if len(m.Files) > MaxMaxFDs {
		return nil, errorf("send", CodeTooLarge, "%d fds", len(m.Files))
	}
	f.Fields = make([]Field, 0, 6)
	add := func(c FieldCode, s string) {
		if s != "" {
			f.Fields = append(f.Fields, Field{Code: c, Value: []byte(s)})
		}
	}
	add(FieldDestName, destName)
	add(FieldPath, m.Path)
	add(FieldInterface, m.Interface)
	add(FieldMember, m.Member)
	add(FieldSignature, m.Signature)
	if t == TypeError {
		add(FieldErrorName, m.ErrorName)
	}
	if len(m.Args) > 0 {
		v, err := EncodeArgs(m.Args)
		if err != nil {
			return nil, err
		}
		f.Fields = append(f.Fields, Field{Code: FieldArgs, Value: v})
	}
	return f, nil
}

// messageOf is the Message of a received data frame, owning files.
// f's Body aliases a buffer that belongs to this frame alone.
func messageOf(f *Frame, files []*os.File) *Message {
	m := &Message{
		Path:      f.Text(FieldPath),
		Interface: f.Text(FieldInterface),
		Member:    f.Text(FieldMember),
		Signature: f.Text(FieldSignature),
		ErrorName: f.Text(FieldErrorName),
		Body:      f.Body,
		Files:     files,
		Flags:     f.Flags,
		mapped:    mappedBody(f),
	}
	if v, ok := f.Field(FieldArgs); ok {
		m.Args, _ = ParseArgs(v) // checked by Rules.Decode
	}
	return m
}

// errorOfReply turns a received ERROR into the error Call returns: a
// porter.Bus.Error.* name gives an *Error with that code, anything else a
// *CallError. The ERROR's files are closed.
func errorOfReply(f *Frame, files []*os.File) error {
	name, text := f.Text(FieldErrorName), string(f.Body)
	dropFrame(f, files)
	if c, ok := CodeOfErrorName(name); ok {
		return &Error{Op: "call", Code: c, Text: text}
	}
	return &CallError{Name: name, Text: text}
}

// errorReply builds the ERROR message a Handler's err is sent as.
func errorReply(err error) *Message {
	var ce *CallError
	var be *Error
	switch {
	case errors.As(err, &ce):
		return &Message{ErrorName: ce.Name, Body: []byte(ce.Text)}
	case errors.As(err, &be):
		return &Message{ErrorName: be.Code.ErrorName(), Body: []byte(be.Text)}
	default:
		return &Message{ErrorName: ErrorFailed, Body: []byte(err.Error())}
	}
}

// closeFiles closes every non-nil file of fs.
func closeFiles(fs []*os.File) {
	for _, f := range fs {
		if f != nil {
			f.Close()
		}
	}
}

// credOf converts a verified identity to an fdpass.Cred.
func credOf(pid, uid, gid uint32) fdpass.Cred {
	return fdpass.Cred{PID: int(pid), UID: int(uid), GID: int(gid)}
}

// local is a library-synthesised protocol error.
func local(op string, c Code, format string, args ...any) *Error {
	return &Error{Op: op, Code: c, Text: fmt.Sprintf(format, args...)}
}
