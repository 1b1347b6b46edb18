package bus

import (
	"encoding/binary"
	"fmt"
)

// FieldCode is a typed field's code. Codes with bit 15 set are critical:
// a receiver that does not know one refuses the frame (UNKNOWN_FIELD).
type FieldCode uint16

// Field codes (docs/protocol-bus.md, "Fields").
const (
	FieldDestName   FieldCode = 0x0001 // a well-known name
	FieldPath       FieldCode = 0x0002 // an object path
	FieldInterface  FieldCode = 0x0003 // an interface name
	FieldMember     FieldCode = 0x0004 // a member name
	FieldErrorName  FieldCode = 0x0005 // an error name
	FieldSignature  FieldCode = 0x0006 // the body's D-Bus signature
	FieldArgs       FieldCode = 0x0007 // string arguments for matching
	FieldBloom      FieldCode = 0x0008 // bloom_size bytes (multicast)
	FieldMemfd      FieldCode = 0x0009 // size u64, 8 zero bytes
	FieldSenderCred FieldCode = 0x000a // master only: pid, uid, gid u32, 4 zero bytes
	FieldMonitor    FieldCode = 0x000b // master only, to monitors
	FieldDBusFirst  FieldCode = 0x0100 // first code reserved for the D-Bus front
	FieldDBusLast   FieldCode = 0x01ff // last code reserved for the D-Bus front
	FieldCritical   FieldCode = 0x8000 // the critical bit
)

var fieldNames = map[FieldCode]string{
	FieldDestName: "DEST_NAME", FieldPath: "PATH", FieldInterface: "INTERFACE",
	FieldMember: "MEMBER", FieldErrorName: "ERROR_NAME", FieldSignature: "SIGNATURE",
	FieldArgs: "ARGS", FieldBloom: "BLOOM", FieldMemfd: "MEMFD",
	FieldSenderCred: "SENDER_CRED", FieldMonitor: "MONITOR",
}

// String is the field's name in the protocol, or its code in hex.
func (c FieldCode) String() string {
	if s, ok := fieldNames[c]; ok {
		return s
	}
	return fmt.Sprintf("field 0x%04x", uint16(c))
}

// Critical reports whether bit 15 is set.
func (c FieldCode) Critical() bool { return c&FieldCritical != 0 }

// Known reports whether c is a field of version 1 (the D-Bus range
// counts as known: its limit is checked, its content is the front's).
func (c FieldCode) Known() bool {
	_, ok := fieldNames[c]
	return ok || (c >= FieldDBusFirst && c <= FieldDBusLast)
}

// Field is one typed field. Unknown non-critical fields are kept as they
// came and encoded again unchanged.
type Field struct {
	Code  FieldCode // what the value is
	Value []byte    // at most 65,535 bytes; padding is not part of it
}

// wireLen is the field's bytes on the wire: code, len, value, padding.
func (f Field) wireLen() int { return (4 + len(f.Value) + 7) &^ 7 }

// parseFields splits the fields area: each code, len, value, zero padding
// to the next multiple of 8, ending exactly at the area's end, each code
// once. Any failure is MALFORMED.
func parseFields(b []byte) ([]Field, error) {
	var fs []Field
	for off := 0; off < len(b); {
		if len(b)-off < 4 {
			return nil, errorf(opDecode, CodeMalformed, "field header cut short at fields offset %d", off)
		}
		c := FieldCode(binary.LittleEndian.Uint16(b[off:]))
		n := int(binary.LittleEndian.Uint16(b[off+2:]))
		end := off + 4 + n
		padded := (end + 7) &^ 7
		if padded > len(b) {
			return nil, errorf(opDecode, CodeMalformed, "field %v of %d bytes runs past fields_len %d", c, n, len(b))
		}
		for _, x := range b[end:padded] {
			if x != 0 {
				return nil, errorf(opDecode, CodeMalformed, "field %v: nonzero padding", c)
			}
		}
		for _, f := range fs {
			if f.Code == c {
				return nil, errorf(opDecode, CodeMalformed, "field %v twice", c)
			}
		}
		fs = append(fs, Field{Code: c, Value: b[off+4 : end : end]})
		off = padded
	}
	return fs, nil
}

// Arg is one entry of the ARGS field: a string argument a sender
// publishes for matching.
type Arg struct {
	Index uint8   // 0 … 15
	Kind  ArgKind // ArgString or ArgPath
	Value string  // UTF-8 without NUL (an object path for ArgPath)
}

// ArgKind is the kind of an ARGS entry.
type ArgKind uint8

// ARGS entry kinds.
const (
	ArgString ArgKind = 1 // a string
	ArgPath   ArgKind = 2 // an object path
)

// Limits of ARGS (docs/protocol-bus.md, "Fields").
const (
	MaxArgs    = 16   // entries, and the largest index + 1
	MaxArgsLen = 4096 // bytes of the ARGS value
	MaxArgLen  = 1024 // a match argument's bytes
)

// EncodeArgs builds the ARGS field's value. It checks what [ParseArgs]
// checks.
func EncodeArgs(args []Arg) ([]byte, error) {
	var b []byte
	for _, a := range args {
		if len(a.Value) > 0xffff {
			return nil, errorf("encode", CodeInvalid, "ARGS: arg%d of %d bytes", a.Index, len(a.Value))
		}
		b = append(b, a.Index, byte(a.Kind))
		b = binary.LittleEndian.AppendUint16(b, uint16(len(a.Value)))
		b = append(b, a.Value...)
	}
	if _, err := ParseArgs(b); err != nil {
		err.(*Error).Op = "encode"
		return nil, err
	}
	return b, nil
}

// ParseArgs splits the ARGS field's value: entries in strictly increasing
// index 0–15, kind 1 or 2, at most 16, the whole value at most 4,096
// bytes; a string entry valid UTF-8 without NUL, a path entry an object
// path. Anything else is INVALID (the field is well-formed as a field; its
// value is bad).
func ParseArgs(b []byte) ([]Arg, error) {
	if len(b) > MaxArgsLen {
		return nil, errorf(opDecode, CodeInvalid, "ARGS of %d bytes, more than %d", len(b), MaxArgsLen)
	}
	var args []Arg
	for off := 0; off < len(b); {
		if len(b)-off < 4 {
			return nil, errorf(opDecode, CodeInvalid, "ARGS entry cut short")
		}
		a := Arg{Index: b[off], Kind: ArgKind(b[off+1])}
		n := int(binary.LittleEndian.Uint16(b[off+2:]))
		if off+4+n > len(b) {
			return nil, errorf(opDecode, CodeInvalid, "ARGS entry arg%d runs past the field", a.Index)
		}
		a.Value = string(b[off+4 : off+4+n])
		off += 4 + n
		switch {
		case a.Index >= MaxArgs:
			return nil, errorf(opDecode, CodeInvalid, "ARGS index %d above 15", a.Index)
		case len(args) > 0 && a.Index <= args[len(args)-1].Index:
			return nil, errorf(opDecode, CodeInvalid, "ARGS index %d after %d: not increasing", a.Index, args[len(args)-1].Index)
		case a.Kind != ArgString && a.Kind != ArgPath:
			return nil, errorf(opDecode, CodeInvalid, "ARGS arg%d: kind %d", a.Index, a.Kind)
		}
		if err := checkArgValue(a.Kind, a.Value); err != nil {
			return nil, errorf(opDecode, CodeInvalid, "ARGS arg%d: %v", a.Index, err)
		}
		args = append(args, a)
	}
	return args, nil
}

// checkArgValue checks an argument's text by its kind.
func checkArgValue(k ArgKind, v string) error {
	if k == ArgPath {
		return CheckPath(v)
	}
	return CheckMatchArg(v)
}

// Memfd is the MEMFD field: the size of the sealed memfd that carries
// the body, attached as the frame's last fd.
type Memfd struct {
	Size uint64 // bytes of the payload, equal to the memfd's st_size
}

// Encode is the field's 16-byte value.
func (m Memfd) Encode() []byte {
	return binary.LittleEndian.AppendUint64(make([]byte, 0, 16), m.Size)[:16:16]
}

// ParseMemfd reads a MEMFD value: exactly 16 bytes, the last 8 zero.
func ParseMemfd(v []byte) (Memfd, error) {
	if len(v) != 16 || !zero(v[8:]) {
		return Memfd{}, errorf(opDecode, CodeMalformed, "MEMFD: %d bytes, or reserved bytes set", len(v))
	}
	return Memfd{Size: binary.LittleEndian.Uint64(v)}, nil
}

// SenderCred is the SENDER_CRED field the master appends to routed
// frames: the sender's credentials as the master verified them.
type SenderCred struct {
	PID, UID, GID uint32 // SO_PEERCRED of the sender's master connection
}

// Encode is the field's 16-byte value.
func (c SenderCred) Encode() []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint32(b, c.PID)
	binary.LittleEndian.PutUint32(b[4:], c.UID)
	binary.LittleEndian.PutUint32(b[8:], c.GID)
	return b
}

// ParseSenderCred reads a SENDER_CRED value: exactly 16 bytes, the last 4 zero.
func ParseSenderCred(v []byte) (SenderCred, error) {
	if len(v) != 16 || !zero(v[12:]) {
		return SenderCred{}, errorf(opDecode, CodeMalformed, "SENDER_CRED: %d bytes, or reserved bytes set", len(v))
	}
	return SenderCred{binary.LittleEndian.Uint32(v), binary.LittleEndian.Uint32(v[4:]), binary.LittleEndian.Uint32(v[8:])}, nil
}

// MonitorInfo is the MONITOR field on a monitor's copy of a frame.
type MonitorInfo struct {
	From, To uint64 // primary addresses of sender and receiver (1: the master)
	Time     uint64 // CLOCK_MONOTONIC ns when the master handled the frame
	NFDs     uint16 // the original nfds
	Flags    uint8  // bit 0 a memfd was attached, bit 1 refused
}

// Monitor flags.
const (
	MonitorMemfd   = 1 << 0 // a memfd was attached
	MonitorRefused = 1 << 1 // the master answered the frame with FAIL
)

// Encode is the field's 32-byte value.
func (m MonitorInfo) Encode() []byte {
	b := make([]byte, 32)
	binary.LittleEndian.PutUint64(b, m.From)
	binary.LittleEndian.PutUint64(b[8:], m.To)
	binary.LittleEndian.PutUint64(b[16:], m.Time)
	binary.LittleEndian.PutUint16(b[24:], m.NFDs)
	b[26] = m.Flags
	return b
}

// ParseMonitor reads a MONITOR value: exactly 32 bytes, flag bits 2–7 and
// the 5 reserved bytes zero.
func ParseMonitor(v []byte) (MonitorInfo, error) {
	if len(v) != 32 || v[26]&^3 != 0 || !zero(v[27:]) {
		return MonitorInfo{}, errorf(opDecode, CodeMalformed, "MONITOR: %d bytes, or reserved bits set", len(v))
	}
	return MonitorInfo{
		From: binary.LittleEndian.Uint64(v), To: binary.LittleEndian.Uint64(v[8:]),
		Time: binary.LittleEndian.Uint64(v[16:]), NFDs: binary.LittleEndian.Uint16(v[24:]), Flags: v[26],
	}, nil
}

// zero reports whether every byte of b is 0.
func zero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
