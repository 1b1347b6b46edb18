package dbuspeer

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/porter-ipc/porter/internal/dbuswire"
)

// Message types of the D-Bus wire format.
const (
	TypeMethodCall   = dbuswire.TypeMethodCall
	TypeMethodReturn = dbuswire.TypeMethodReturn
	TypeError        = dbuswire.TypeError
	TypeSignal       = dbuswire.TypeSignal
)

// maxMessage is the D-Bus limit on one message (128 MiB).
const maxMessage = dbuswire.MaxMessage

// Message is one D-Bus message: the header fields this client uses, the
// marshalled body and the fds that came (or go) with it.
type Message struct {
	Type        byte
	Flags       byte
	Serial      uint32
	ReplySerial uint32
	Path        string
	Interface   string
	Member      string
	ErrorName   string
	Destination string
	Sender      string
	Signature   string
	Body        []byte
	// FDs are the descriptors of the message: sent borrowed; received
	// owned by the receiver, who closes them.
	FDs []int
}

// StringBody marshals one string as a body of signature "s".
func StringBody(s string) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(s)))
	b = append(b, s...)
	return append(b, 0)
}

// BodyString returns the first argument of a body whose signature starts
// with "s" (or "o").
func (m *Message) BodyString() (string, error) {
	if len(m.Signature) == 0 || (m.Signature[0] != 's' && m.Signature[0] != 'o') {
		return "", fmt.Errorf("dbus: body signature %q has no leading string", m.Signature)
	}
	d := dbuswire.NewDecoder('l', m.Signature, m.Body)
	if m.Signature[0] == 'o' {
		return d.ObjectPath()
	}
	return d.String()
}

// BodyUint32 returns the first argument of a body of signature "u".
func (m *Message) BodyUint32() (uint32, error) {
	if len(m.Signature) == 0 || m.Signature[0] != 'u' {
		return 0, fmt.Errorf("dbus: body signature %q has no leading uint32", m.Signature)
	}
	return dbuswire.NewDecoder('l', m.Signature, m.Body).Uint32()
}

// appendMessage marshals m, little-endian, with the given serial.
func appendMessage(b []byte, m *Message, serial uint32) []byte {
	h := dbuswire.Header{Order: 'l', Type: m.Type, Flags: m.Flags, Serial: serial, ReplySerial: m.ReplySerial,
		Path: m.Path, Interface: m.Interface, Member: m.Member, ErrorName: m.ErrorName,
		Destination: m.Destination, Sender: m.Sender, Signature: m.Signature, UnixFDs: uint32(len(m.FDs))}
	return dbuswire.AppendMessage(b, &h, m.Body)
}

// messageLen returns the length of the message at the head of b, or 0 if
// b does not yet hold its fixed header.
func messageLen(b []byte) (int, error) {
	n, err := dbuswire.MessageLen(b)
	if errors.Is(err, dbuswire.ErrShort) {
		return 0, nil
	}
	return n, err
}

// parseMessage decodes the little-endian message at the head of b: b is
// the whole message (len(b) is its messageLen), or its header alone
// (then Body is empty). The body aliases b; the caller copies it if it
// keeps b's buffer for more reads. nfds reports the UNIX_FDS field.
func parseMessage(b []byte) (m *Message, nfds int, err error) {
	h, at, err := dbuswire.ParseHeader(b)
	if err != nil {
		return nil, 0, fmt.Errorf("dbus: %w", err)
	}
	if h.Order != 'l' {
		return nil, 0, fmt.Errorf("dbus: message in byte order %q; this client reads only little-endian", h.Order)
	}
	m = &Message{Type: h.Type, Flags: h.Flags, Serial: h.Serial, ReplySerial: h.ReplySerial, Path: h.Path,
		Interface: h.Interface, Member: h.Member, ErrorName: h.ErrorName, Destination: h.Destination,
		Sender: h.Sender, Signature: h.Signature, Body: b[at:]}
	return m, int(h.UnixFDs), nil
}
