// Package dbuswire is the D-Bus wire format for porter's D-Bus front:
// message header parsing and writing, body marshalling for the bus
// driver, the SASL server side, and match rules.
//
// It follows the D-Bus specification and is on the routing path: the
// header is parsed by hand, bodies that are passed through are never
// decoded, and nothing uses reflection.
package dbuswire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// MaxMessage is the spec's maximum message size (128 MiB).
const MaxMessage = 1 << 27

// maxArray is the spec's maximum array length in bytes (64 MiB).
const maxArray = 1 << 26

// Message types.
const (
	TypeMethodCall   = 1
	TypeMethodReturn = 2
	TypeError        = 3
	TypeSignal       = 4
)

// Header flags. Flags the bus does not know pass through untouched.
const (
	FlagNoReplyExpected      = 1
	FlagNoAutoStart          = 2
	FlagAllowInteractiveAuth = 4
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

// The reserved names of the local pseudo-interface, which no message may
// carry over a connection.
const (
	localPath      = "/org/freedesktop/DBus/Local"
	localInterface = "org.freedesktop.DBus.Local"
)

// ErrShort means fewer than the 16 bytes of the fixed header are at hand.
var ErrShort = errors.New("dbuswire: need 16 bytes for the fixed header")

// ErrInvalid is wrapped by every error about a malformed message or body;
// a peer that sends one is disconnected.
var ErrInvalid = errors.New("dbuswire: invalid message")

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, a...)...)
}

// Header is a message's fixed header and its header fields.
type Header struct {
	Order  byte // 'l' (little-endian) or 'B' (big-endian)
	Type   byte
	Flags  byte
	Serial uint32

	Path, Interface, Member, ErrorName, Destination, Sender, Signature string

	ReplySerial uint32 // 0: absent
	UnixFDs     uint32
	BodyLen     uint32
}

func u32(big bool, b []byte) uint32 {
	if big {
		return binary.BigEndian.Uint32(b)
	}
	return binary.LittleEndian.Uint32(b)
}

// MessageLen returns the total length of the message starting at b (the
// fixed header, the header fields array, padding to 8, and the body) from
// its first 16 bytes; it checks the endianness byte, version 1 and the
// limits (array ≤ 64 MiB, total ≤ MaxMessage).
func MessageLen(b []byte) (int, error) {
	if len(b) < 16 {
		return 0, ErrShort
	}
	var big bool
	switch b[0] {
	case 'l':
	case 'B':
		big = true
	default:
		return 0, invalid("endianness byte %q is neither 'l' nor 'B'", b[0])
	}
	if b[3] != 1 {
		return 0, invalid("protocol version %d, want 1", b[3])
	}
	fields := uint64(u32(big, b[12:]))
	if fields > maxArray {
		return 0, invalid("header field array of %d bytes is over the 64 MiB limit", fields)
	}
	n := 16 + (fields+7)&^7 + uint64(u32(big, b[4:]))
	if n > MaxMessage {
		return 0, invalid("message of %d bytes is over the %d-byte limit", n, MaxMessage)
	}
	return int(n), nil
}

var fieldNames = [...]string{
	fieldPath: "PATH", fieldInterface: "INTERFACE", fieldMember: "MEMBER",
	fieldErrorName: "ERROR_NAME", fieldReplySerial: "REPLY_SERIAL",
	fieldDestination: "DESTINATION", fieldSender: "SENDER",
	fieldSignature: "SIGNATURE", fieldUnixFDs: "UNIX_FDS",
}

var fieldTypes = [...]byte{
	fieldPath: 'o', fieldInterface: 's', fieldMember: 's', fieldErrorName: 's',
	fieldReplySerial: 'u', fieldDestination: 's', fieldSender: 's',
	fieldSignature: 'g', fieldUnixFDs: 'u',
}

// ParseMessage parses exactly one whole message b: the header fields
// (unknown field codes skipped, as the spec requires), validation of every
// name (object path, interface, member, error name, bus name, signature
// syntax) and the fields each type requires; body is the slice of b after
// the header padding (not copied, not decoded). Errors wrap ErrInvalid (or
// are ErrShort) and say what is wrong. A message of an unknown type
// (above 4) parses; the spec says its receiver ignores it.
func ParseMessage(b []byte) (h Header, body []byte, err error) {
	n, err := MessageLen(b)
	if err != nil {
		return h, nil, err
	}
	if n != len(b) {
		return h, nil, invalid("message is %d bytes, its header says %d", len(b), n)
	}
	h, at, err := ParseHeader(b)
	if err != nil {
		return h, nil, err
	}
	return h, b[at:], nil
}

// ParseHeader is ParseMessage without the body: b holds at least the
// message's fixed header, its header fields and their padding (ErrShort
// otherwise; the body need not have arrived). It returns the header and
// the offset of the body in the message.
func ParseHeader(b []byte) (h Header, bodyAt int, err error) {
	if _, err := MessageLen(b); err != nil {
		return h, 0, err
	}
	big := b[0] == 'B'
	h.Order, h.Type, h.Flags = b[0], b[1], b[2]
	h.BodyLen = u32(big, b[4:])
	h.Serial = u32(big, b[8:])
	if h.Type == 0 {
		return h, 0, invalid("message type 0")
	}
	if h.Serial == 0 {
		return h, 0, invalid("serial 0")
	}
	end := 16 + int(u32(big, b[12:]))
	if len(b) < (end+7)&^7 {
		return h, 0, ErrShort
	}
	r := reader{b: b[:end], off: 16, big: big}
	var seen uint16
	var fields string
	for r.off < end {
		if err := r.align(8); err != nil {
			return h, 0, err
		}
		if r.off+4 > end {
			return h, 0, invalid("header field at offset %d truncated", r.off)
		}
		code := b[r.off]
		if code == 0 {
			return h, 0, invalid("header field code 0")
		}
		sl := int(b[r.off+1])
		if r.off+2+sl+1 > end || b[r.off+2+sl] != 0 {
			return h, 0, invalid("header field %d: variant signature truncated", code)
		}
		sig := b[r.off+2 : r.off+2+sl]
		r.off += 3 + sl
		if int(code) >= len(fieldTypes) {
			// Unknown field: skip its value, whatever its type.
			s := string(sig)
			if !validSingle(s) {
				return h, 0, invalid("header field %d: bad variant signature %q", code, s)
			}
			if _, err := r.skip(s, 1); err != nil {
				return h, 0, fmt.Errorf("header field %d: %w", code, err)
			}
			continue
		}
		if sl != 1 || sig[0] != fieldTypes[code] {
			return h, 0, invalid("header field %s has type %q, want %q", fieldNames[code], sig, fieldTypes[code])
		}
		if seen&(1<<code) != 0 {
			return h, 0, invalid("header field %s appears twice", fieldNames[code])
		}
		seen |= 1 << code
		switch code {
		case fieldReplySerial, fieldUnixFDs:
			v, err := r.u32()
			if err != nil {
				return h, 0, err
			}
			if code == fieldUnixFDs {
				h.UnixFDs = v
			} else if v == 0 {
				return h, 0, invalid("REPLY_SERIAL 0")
			} else {
				h.ReplySerial = v
			}
		case fieldSignature:
			s, err := r.sig()
			if err != nil {
				return h, 0, err
			}
			h.Signature = s
		default:
			sb, err := r.strBytes()
			if err != nil {
				return h, 0, fmt.Errorf("header field %s: %w", fieldNames[code], err)
			}
			// One copy of the field array for all the strings: one
			// allocation per message instead of one per field.
			if fields == "" {
				fields = string(b[16:end])
			}
			at := r.off - len(sb) - 1 - 16
			s := fields[at : at+len(sb)]
			switch code {
			case fieldPath:
				h.Path = s
			case fieldInterface:
				h.Interface = s
			case fieldMember:
				h.Member = s
			case fieldErrorName:
				h.ErrorName = s
			case fieldDestination:
				h.Destination = s
			case fieldSender:
				h.Sender = s
			}
		}
	}
	if r.off != end {
		return h, 0, invalid("header field array overruns its length")
	}
	bodyAt = (end + 7) &^ 7
	for _, c := range b[end:bodyAt] {
		if c != 0 {
			return h, 0, invalid("non-zero padding after the header")
		}
	}
	if err := h.check(seen); err != nil {
		return h, 0, err
	}
	return h, bodyAt, nil
}

// check validates the names in h and the fields its type requires.
func (h *Header) check(seen uint16) error {
	has := func(code int) bool { return seen&(1<<code) != 0 }
	if has(fieldPath) && !ValidObjectPath(h.Path) {
		return invalid("bad object path %q", h.Path)
	}
	if has(fieldInterface) && !ValidInterface(h.Interface) {
		return invalid("bad interface name %q", h.Interface)
	}
	if has(fieldMember) && !ValidMember(h.Member) {
		return invalid("bad member name %q", h.Member)
	}
	if has(fieldErrorName) && !ValidErrorName(h.ErrorName) {
		return invalid("bad error name %q", h.ErrorName)
	}
	if has(fieldDestination) && !ValidBusName(h.Destination) {
		return invalid("bad destination bus name %q", h.Destination)
	}
	if has(fieldSender) && !ValidBusName(h.Sender) {
		return invalid("bad sender bus name %q", h.Sender)
	}
	if !ValidSignature(h.Signature) {
		return invalid("bad body signature %q", h.Signature)
	}
	if h.Path == localPath {
		return invalid("the reserved path %s", localPath)
	}
	if h.Interface == localInterface {
		return invalid("the reserved interface %s", localInterface)
	}
	if h.Signature == "" && h.BodyLen != 0 {
		return invalid("body of %d bytes without a SIGNATURE field", h.BodyLen)
	}
	if h.Signature != "" && h.BodyLen == 0 {
		return invalid("empty body for signature %q", h.Signature)
	}
	missing := func(name string) error {
		return invalid("%s without the %s field", typeName(h.Type), name)
	}
	switch h.Type {
	case TypeMethodCall:
		if !has(fieldPath) {
			return missing("PATH")
		}
		if !has(fieldMember) {
			return missing("MEMBER")
		}
	case TypeSignal:
		if !has(fieldPath) {
			return missing("PATH")
		}
		if !has(fieldInterface) {
			return missing("INTERFACE")
		}
		if !has(fieldMember) {
			return missing("MEMBER")
		}
	case TypeError:
		if !has(fieldErrorName) {
			return missing("ERROR_NAME")
		}
		if !has(fieldReplySerial) {
			return missing("REPLY_SERIAL")
		}
	case TypeMethodReturn:
		if !has(fieldReplySerial) {
			return missing("REPLY_SERIAL")
		}
	}
	return nil
}

func typeName(t byte) string {
	switch t {
	case TypeMethodCall:
		return "method call"
	case TypeMethodReturn:
		return "method return"
	case TypeError:
		return "error"
	case TypeSignal:
		return "signal"
	}
	return fmt.Sprintf("message type %d", t)
}

// AppendMessage appends the message (h with its BodyLen set from body) to
// dst in h.Order byte order ('B' big-endian, anything else little-endian),
// fields in a fixed order (empty strings and zero numbers omitted), and
// returns it. A body marshalled in the other byte order is the caller's
// problem.
func AppendMessage(dst []byte, h *Header, body []byte) []byte {
	h.BodyLen = uint32(len(body))
	order := byte('l')
	var bo interface {
		binary.ByteOrder
		binary.AppendByteOrder
	} = binary.LittleEndian
	if h.Order == 'B' {
		order, bo = 'B', binary.BigEndian
	}
	need := 16 + 8*9 + len(h.Path) + len(h.Interface) + len(h.Member) + len(h.ErrorName) +
		len(h.Destination) + len(h.Sender) + len(h.Signature) + 9*8 + len(body)
	if cap(dst)-len(dst) < need {
		nd := make([]byte, len(dst), len(dst)+need)
		copy(nd, dst)
		dst = nd
	}
	start := len(dst)
	dst = append(dst, order, h.Type, h.Flags, 1)
	dst = bo.AppendUint32(dst, h.BodyLen)
	dst = bo.AppendUint32(dst, h.Serial)
	dst = append(dst, 0, 0, 0, 0)
	fields := len(dst)
	str := func(code, typ byte, v string) {
		if v == "" {
			return
		}
		dst = padTo(dst, start, 8)
		dst = append(dst, code, 1, typ, 0)
		if typ == 'g' {
			dst = append(dst, byte(len(v)))
		} else {
			dst = bo.AppendUint32(dst, uint32(len(v)))
		}
		dst = append(dst, v...)
		dst = append(dst, 0)
	}
	num := func(code byte, v uint32) {
		if v == 0 {
			return
		}
		dst = padTo(dst, start, 8)
		dst = append(dst, code, 1, 'u', 0)
		dst = bo.AppendUint32(dst, v)
	}
	str(fieldPath, 'o', h.Path)
	str(fieldInterface, 's', h.Interface)
	str(fieldMember, 's', h.Member)
	str(fieldErrorName, 's', h.ErrorName)
	num(fieldReplySerial, h.ReplySerial)
	str(fieldDestination, 's', h.Destination)
	str(fieldSender, 's', h.Sender)
	str(fieldSignature, 'g', h.Signature)
	num(fieldUnixFDs, h.UnixFDs)
	bo.PutUint32(dst[fields-4:], uint32(len(dst)-fields))
	dst = padTo(dst, start, 8)
	return append(dst, body...)
}

// padTo appends zero bytes until the data that begins at start is aligned
// to n.
func padTo(b []byte, start, n int) []byte {
	for (len(b)-start)%n != 0 {
		b = append(b, 0)
	}
	return b
}
