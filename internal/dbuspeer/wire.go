package dbuspeer

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Message types of the D-Bus wire format.
const (
	TypeMethodCall   = 1
	TypeMethodReturn = 2
	TypeError        = 3
	TypeSignal       = 4
)

// Header field codes.
const (
	fieldPath        = 1
	fieldInterface   = 2
	fieldMember      = 3
	fieldErrorName   = 4
	fieldReplySerial = 5
	fieldDestination = 6
	fieldSender      = 7
	fieldSignature   = 8
	fieldUnixFDs     = 9
)

// maxMessage is the D-Bus limit on one message (128 MiB).
const maxMessage = 128 << 20

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
	r := reader{b: m.Body}
	return r.str()
}

// BodyUint32 returns the first argument of a body of signature "u".
func (m *Message) BodyUint32() (uint32, error) {
	if len(m.Signature) == 0 || m.Signature[0] != 'u' {
		return 0, fmt.Errorf("dbus: body signature %q has no leading uint32", m.Signature)
	}
	r := reader{b: m.Body}
	return r.u32()
}

// appendMessage marshals m, little-endian, with the given serial.
func appendMessage(b []byte, m *Message, serial uint32) []byte {
	start := len(b)
	b = append(b, 'l', m.Type, m.Flags, 1)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(m.Body)))
	b = binary.LittleEndian.AppendUint32(b, serial)
	b = append(b, 0, 0, 0, 0) // length of the field array, set below
	fields := len(b)
	str := func(code byte, sig byte, v string) {
		if v == "" {
			return
		}
		b = pad(b, start, 8)
		b = append(b, code, 1, sig, 0)
		if sig == 'g' {
			b = append(b, byte(len(v)))
		} else {
			b = binary.LittleEndian.AppendUint32(b, uint32(len(v)))
		}
		b = append(b, v...)
		b = append(b, 0)
	}
	u32 := func(code byte, v uint32) {
		if v == 0 {
			return
		}
		b = pad(b, start, 8)
		b = append(b, code, 1, 'u', 0)
		b = binary.LittleEndian.AppendUint32(b, v)
	}
	str(fieldPath, 'o', m.Path)
	str(fieldInterface, 's', m.Interface)
	str(fieldMember, 's', m.Member)
	str(fieldErrorName, 's', m.ErrorName)
	u32(fieldReplySerial, m.ReplySerial)
	str(fieldDestination, 's', m.Destination)
	str(fieldSender, 's', m.Sender)
	str(fieldSignature, 'g', m.Signature)
	u32(fieldUnixFDs, uint32(len(m.FDs)))
	binary.LittleEndian.PutUint32(b[fields-4:], uint32(len(b)-fields))
	b = pad(b, start, 8)
	return append(b, m.Body...)
}

// pad appends zero bytes until the message that begins at start is
// aligned to n.
func pad(b []byte, start, n int) []byte {
	for (len(b)-start)%n != 0 {
		b = append(b, 0)
	}
	return b
}

// messageLen returns the length of the message at the head of b, or 0 if
// b does not yet hold its fixed header.
func messageLen(b []byte) (int, error) {
	if len(b) < 16 {
		return 0, nil
	}
	if b[0] != 'l' {
		return 0, fmt.Errorf("dbus: message in byte order %q; this client reads only little-endian", b[0])
	}
	body := int64(binary.LittleEndian.Uint32(b[4:]))
	fields := int64(binary.LittleEndian.Uint32(b[12:]))
	n := (16+fields+7)&^7 + body
	if n > maxMessage {
		return 0, fmt.Errorf("dbus: message of %d bytes is over the limit", n)
	}
	return int(n), nil
}

// parseMessage decodes one whole little-endian message (len(b) is its
// messageLen). The body aliases b; the caller copies it if it keeps b's
// buffer for more reads. nfds reports the UNIX_FDS field.
func parseMessage(b []byte) (m *Message, nfds int, err error) {
	m = &Message{Type: b[1], Flags: b[2], Serial: binary.LittleEndian.Uint32(b[8:])}
	if b[3] != 1 {
		return nil, 0, fmt.Errorf("dbus: protocol version %d", b[3])
	}
	fieldsEnd := 16 + int(binary.LittleEndian.Uint32(b[12:]))
	r := reader{b: b[:fieldsEnd], off: 16}
	for r.off < fieldsEnd {
		if err := r.align(8); err != nil {
			return nil, 0, err
		}
		code, err := r.byte()
		if err != nil {
			return nil, 0, err
		}
		sig, err := r.sig()
		if err != nil {
			return nil, 0, err
		}
		var s string
		var u uint32
		switch sig {
		case "s", "o":
			s, err = r.str()
		case "g":
			s, err = r.sig()
		case "u":
			u, err = r.u32()
		default:
			err = fmt.Errorf("dbus: header field %d of type %q not understood", code, sig)
		}
		if err != nil {
			return nil, 0, err
		}
		switch code {
		case fieldPath:
			m.Path = s
		case fieldInterface:
			m.Interface = s
		case fieldMember:
			m.Member = s
		case fieldErrorName:
			m.ErrorName = s
		case fieldReplySerial:
			m.ReplySerial = u
		case fieldDestination:
			m.Destination = s
		case fieldSender:
			m.Sender = s
		case fieldSignature:
			m.Signature = s
		case fieldUnixFDs:
			nfds = int(u)
		}
	}
	m.Body = b[(fieldsEnd+7)&^7:]
	return m, nfds, nil
}

var errShort = errors.New("dbus: message truncated")

// reader decodes values aligned relative to the start of b.
type reader struct {
	b   []byte
	off int
}

func (r *reader) align(n int) error {
	o := (r.off + n - 1) &^ (n - 1)
	if o > len(r.b) {
		return errShort
	}
	r.off = o
	return nil
}

func (r *reader) byte() (byte, error) {
	if r.off >= len(r.b) {
		return 0, errShort
	}
	r.off++
	return r.b[r.off-1], nil
}

func (r *reader) u32() (uint32, error) {
	if err := r.align(4); err != nil {
		return 0, err
	}
	if r.off+4 > len(r.b) {
		return 0, errShort
	}
	r.off += 4
	return binary.LittleEndian.Uint32(r.b[r.off-4:]), nil
}

func (r *reader) str() (string, error) {
	n, err := r.u32()
	if err != nil {
		return "", err
	}
	if uint64(r.off)+uint64(n)+1 > uint64(len(r.b)) {
		return "", errShort
	}
	s := string(r.b[r.off : r.off+int(n)])
	r.off += int(n) + 1
	return s, nil
}

func (r *reader) sig() (string, error) {
	n, err := r.byte()
	if err != nil {
		return "", err
	}
	if r.off+int(n)+1 > len(r.b) {
		return "", errShort
	}
	s := string(r.b[r.off : r.off+int(n)])
	r.off += int(n) + 1
	return s, nil
}
