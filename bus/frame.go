package bus

import (
	"encoding/binary"
	"fmt"
)

// Version is the protocol version this package speaks.
const Version = 1

// Sizes and limits of the frame (docs/protocol-bus.md, "Transport" and
// "The frame").
const (
	HeaderSize      = 48     // the fixed header
	MaxFieldsLen    = 8192   // fields_len at most
	DefaultMaxFrame = 65536  // max_frame unless WELCOME says otherwise
	MaxMaxFrame     = 196608 // max_frame is never above this
	MasterRoom      = 64     // an endpoint's frame is at most max_frame − MasterRoom
	DefaultMaxFDs   = 16     // max_fds unless WELCOME says otherwise
	MaxMaxFDs       = 252    // max_fds is never above this (a memfd must fit)
	MaxAddress      = 1<<63 - 1
	AddrNone        = 0 // "no address"
	AddrBus         = 1 // the bus itself: the master speaking
)

// Type is a frame's type (the header's byte 1).
type Type uint8

// Frame types (docs/protocol-bus.md, "Types").
const (
	TypeCall          Type = 0x01
	TypeReply         Type = 0x02
	TypeError         Type = 0x03
	TypeSignal        Type = 0x04
	TypeHello         Type = 0x10
	TypeBye           Type = 0x11
	TypeAddAddress    Type = 0x12
	TypeRemoveAddress Type = 0x13
	TypeRequestName   Type = 0x14
	TypeReleaseName   Type = 0x15
	TypeConnect       Type = 0x16
	TypeDisconnect    Type = 0x17
	TypeAddMatch      Type = 0x18
	TypeRemoveMatch   Type = 0x19
	TypeResolve       Type = 0x1a
	TypeList          Type = 0x1b
	TypeBecomeMonitor Type = 0x1c
	TypeWelcome       Type = 0x20
	TypeDone          Type = 0x21
	TypeFail          Type = 0x22
	TypeIntroduce     Type = 0x23
	TypeRevoke        Type = 0x24
	TypeIdentity      Type = 0x25
	TypeListEnd       Type = 0x26
	TypeEnd           Type = 0x30
)

var typeNames = map[Type]string{
	TypeCall: "CALL", TypeReply: "REPLY", TypeError: "ERROR", TypeSignal: "SIGNAL",
	TypeHello: "HELLO", TypeBye: "BYE", TypeAddAddress: "ADD_ADDRESS",
	TypeRemoveAddress: "REMOVE_ADDRESS", TypeRequestName: "REQUEST_NAME",
	TypeReleaseName: "RELEASE_NAME", TypeConnect: "CONNECT", TypeDisconnect: "DISCONNECT",
	TypeAddMatch: "ADD_MATCH", TypeRemoveMatch: "REMOVE_MATCH", TypeResolve: "RESOLVE",
	TypeList: "LIST", TypeBecomeMonitor: "BECOME_MONITOR", TypeWelcome: "WELCOME",
	TypeDone: "DONE", TypeFail: "FAIL", TypeIntroduce: "INTRODUCE", TypeRevoke: "REVOKE",
	TypeIdentity: "IDENTITY", TypeListEnd: "LIST_END", TypeEnd: "END",
}

// String is the type's name in the protocol ("REQUEST_NAME").
func (t Type) String() string {
	if s, ok := typeNames[t]; ok {
		return s
	}
	return fmt.Sprintf("type 0x%02x", uint8(t))
}

// Known reports whether t is a type of version 1.
func (t Type) Known() bool { _, ok := typeNames[t]; return ok }

// Data reports whether t is a data type (CALL, REPLY, ERROR, SIGNAL).
func (t Type) Data() bool { return t >= TypeCall && t <= TypeSignal }

// Request reports whether t is a request an endpoint sends the master.
func (t Type) Request() bool { return t >= TypeHello && t <= TypeBecomeMonitor }

// FromMaster reports whether t is a frame only the master sends.
func (t Type) FromMaster() bool { return t >= TypeWelcome && t <= TypeListEnd }

// Control reports whether t is a control frame (0x10–0x26).
func (t Type) Control() bool { return t.Request() || t.FromMaster() }

// Flags is the header's flags word. Bits 0–7 are D-Bus's flags byte.
type Flags uint16

// Header flags (docs/protocol-bus.md, "Flags").
const (
	FlagNoReplyExpected      Flags = 1 << 0 // CALL: no REPLY or ERROR wanted
	FlagNoAutoStart          Flags = 1 << 1 // CALL: D-Bus's flag, passed through
	FlagAllowInteractiveAuth Flags = 1 << 2 // CALL: D-Bus's flag, passed through
	FlagsDBus                Flags = 0x00ff // bits passed through on data frames
	FlagsPorter              Flags = 0xff00 // must be 0 in version 1
)

// Frame is one frame: the header, the typed fields in wire order, and the
// inline body. A decoded Frame's Fields and Body alias the decoded bytes.
type Frame struct {
	Type        Type    // what the frame is
	Flags       Flags   // D-Bus's flags byte in bits 0–7; bits 8–15 must be 0
	NFDs        uint16  // application fds attached (not counting a memfd)
	Serial      uint64  // nonzero
	ReplySerial uint64  // the serial answered, or 0
	Source      uint64  // the sending address (0 in HELLO, 1 from the master)
	Destination uint64  // an address; 0 = by DEST_NAME or multicast; 1 = the master
	Fields      []Field // typed fields, in wire order, each code once
	Body        []byte  // the inline body; empty with a MEMFD field
}

// FieldsLen is the bytes the fields take on the wire, padding included.
func (f *Frame) FieldsLen() int {
	n := 0
	for _, fl := range f.Fields {
		n += fl.wireLen()
	}
	return n
}

// Size is the frame's length on the wire.
func (f *Frame) Size() int { return HeaderSize + f.FieldsLen() + len(f.Body) }

// Field returns the value of the field with code c, and whether there is one.
func (f *Frame) Field(c FieldCode) ([]byte, bool) {
	for _, fl := range f.Fields {
		if fl.Code == c {
			return fl.Value, true
		}
	}
	return nil, false
}

// Text returns the field c as a string ("" when absent).
func (f *Frame) Text(c FieldCode) string {
	v, _ := f.Field(c)
	return string(v)
}

// SetField sets field c to v: in place when the frame has it, appended
// otherwise.
func (f *Frame) SetField(c FieldCode, v []byte) {
	for i := range f.Fields {
		if f.Fields[i].Code == c {
			f.Fields[i].Value = v
			return
		}
	}
	f.Fields = append(f.Fields, Field{Code: c, Value: v})
}

// DelField removes field c, if the frame has it.
func (f *Frame) DelField(c FieldCode) {
	for i := range f.Fields {
		if f.Fields[i].Code == c {
			f.Fields = append(f.Fields[:i:i], f.Fields[i+1:]...)
			return
		}
	}
}

// MarshalBinary encodes the frame. It refuses what no receiver would
// take apart: flag bits 8–15, a field value over 65,535 bytes, a
// duplicate field code, fields_len over MaxFieldsLen. It does not check
// values (names, limits of the bus); [Rules.Check] does.
func (f *Frame) MarshalBinary() ([]byte, error) {
	return f.AppendBinary(make([]byte, 0, f.Size()))
}

// AppendBinary appends the encoded frame to b.
func (f *Frame) AppendBinary(b []byte) ([]byte, error) {
	const op = "encode"
	if f.Flags&FlagsPorter != 0 {
		return b, errorf(op, CodeMalformed, "flag bits 8-15 set (%#04x)", uint16(f.Flags))
	}
	fl := f.FieldsLen()
	if fl > MaxFieldsLen {
		return b, errorf(op, CodeTooLarge, "fields take %d bytes, more than %d", fl, MaxFieldsLen)
	}
	if uint64(len(f.Body)) > 1<<32-1 {
		return b, errorf(op, CodeTooLarge, "body of %d bytes", len(f.Body))
	}
	for i, x := range f.Fields {
		if len(x.Value) > 0xffff {
			return b, errorf(op, CodeMalformed, "field %v: value of %d bytes", x.Code, len(x.Value))
		}
		for _, y := range f.Fields[:i] {
			if y.Code == x.Code {
				return b, errorf(op, CodeMalformed, "field %v twice", x.Code)
			}
		}
	}
	b = append(b, Version, byte(f.Type))
	b = binary.LittleEndian.AppendUint16(b, uint16(f.Flags))
	b = binary.LittleEndian.AppendUint32(b, uint32(fl))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(f.Body)))
	b = binary.LittleEndian.AppendUint16(b, f.NFDs)
	b = append(b, 0, 0)
	b = binary.LittleEndian.AppendUint64(b, f.Serial)
	b = binary.LittleEndian.AppendUint64(b, f.ReplySerial)
	b = binary.LittleEndian.AppendUint64(b, f.Source)
	b = binary.LittleEndian.AppendUint64(b, f.Destination)
	for _, x := range f.Fields {
		b = binary.LittleEndian.AppendUint16(b, uint16(x.Code))
		b = binary.LittleEndian.AppendUint16(b, uint16(len(x.Value)))
		b = append(b, x.Value...)
		for n := 4 + len(x.Value); n%8 != 0; n++ {
			b = append(b, 0)
		}
	}
	return append(b, f.Body...), nil
}

// UnmarshalBinary decodes b as [Decode] does (no path, no state, default
// limits, fds not counted), into f. f's Fields and Body alias b.
func (f *Frame) UnmarshalBinary(b []byte) error {
	g, err := Decode(b)
	if err != nil {
		return err
	}
	*f = *g
	return nil
}
