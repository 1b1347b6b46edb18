package bus

import (
	"encoding/binary"
)

const opDecode = "decode"

// Path is where a frame travels, which decides the types allowed on it.
type Path uint8

// Paths.
const (
	PathAny        Path = iota // no path check: every type of version 1
	PathToMaster               // on a master connection, read by the master
	PathFromMaster             // on a master connection, read by the endpoint
	PathChannel                // on a direct channel
)

// Rules is what a receiver knows when it checks a frame: the path it
// came on, whether the connection has joined, and the bus's parameters
// from WELCOME. The zero Rules checks structure only, with the defaults.
type Rules struct {
	Path Path // where the frame arrived
	// Joined: on PathToMaster, HELLO was handled; on PathFromMaster,
	// WELCOME arrived. Ignored on other paths.
	Joined    bool
	MaxFrame  int // max_frame; 0 means DefaultMaxFrame
	MaxFDs    int // max_fds; 0 means DefaultMaxFDs
	BloomSize int // bloom_size; 0 means DefaultBloomSize
	// Monitor: on PathFromMaster, the connection became a monitor. It then
	// also receives copies of requests (MONITOR field), and a copy never
	// carries fds: a MEMFD field only shows the size (docs/protocol-bus.md,
	// "What a monitor sees").
	Monitor bool
}

func (r *Rules) maxFrame() int {
	if r.MaxFrame > 0 {
		return r.MaxFrame
	}
	return DefaultMaxFrame
}

func (r *Rules) maxFDs() int {
	if r.MaxFDs > 0 {
		return r.MaxFDs
	}
	return DefaultMaxFDs
}

func (r *Rules) bloomSize() int {
	if r.BloomSize > 0 {
		return r.BloomSize
	}
	return DefaultBloomSize
}

// fromEndpoint: frames on these paths were sent by an endpoint, which must
// leave MasterRoom bytes for the master's additions.
func (r *Rules) fromEndpoint() bool { return r.Path == PathToMaster || r.Path == PathChannel }

// Decode checks and decodes b as a frame on no particular path, with the
// default limits and without counting fds: [Rules.Decode] with the zero
// Rules and fds = -1.
func Decode(b []byte) (*Frame, error) {
	var r Rules
	return r.Decode(b, -1)
}

// Decode checks b, a received packet, in the order of the protocol's
// "Validation order" and decodes it; the first failure decides the
// error's code. fds is the number of descriptors that arrived with the
// packet (-1: not counted). A packet the kernel truncated (MSG_TRUNC) is
// TOO_LARGE before it gets here; the caller reports it, and closes every
// fd of a refused frame.
//
// The returned Frame's Fields and Body alias b.
func (r *Rules) Decode(b []byte, fds int) (*Frame, error) {
	f, err := r.decodeStructure(b, fds)
	if err != nil {
		return nil, err
	}
	if err := r.Check(f); err != nil {
		return nil, err
	}
	return f, nil
}

// decodeStructure is every check up to and including the fd count.
func (r *Rules) decodeStructure(b []byte, fds int) (*Frame, error) {
	// 1. Size. A packet shorter than the header is MALFORMED ("Every bad
	// input": "packet shorter than 48 bytes … MALFORMED"); only a long
	// one is TOO_LARGE.
	limit := r.maxFrame()
	if r.fromEndpoint() {
		limit -= MasterRoom
	}
	if len(b) > limit {
		return nil, errorf(opDecode, CodeTooLarge, "%d-byte frame, more than %d", len(b), limit)
	}
	if len(b) < HeaderSize {
		return nil, errorf(opDecode, CodeMalformed, "%d-byte packet, shorter than the %d-byte header", len(b), HeaderSize)
	}
	// 2. Version.
	if b[0] != Version {
		return nil, errorf(opDecode, CodeVersion, "version %d, not %d", b[0], Version)
	}
	// 3. Type, path, state.
	f := &Frame{
		Type:        Type(b[1]),
		Flags:       Flags(binary.LittleEndian.Uint16(b[2:])),
		NFDs:        binary.LittleEndian.Uint16(b[12:]),
		Serial:      binary.LittleEndian.Uint64(b[16:]),
		ReplySerial: binary.LittleEndian.Uint64(b[24:]),
		Source:      binary.LittleEndian.Uint64(b[32:]),
		Destination: binary.LittleEndian.Uint64(b[40:]),
	}
	if err := r.checkType(f.Type); err != nil {
		return nil, err
	}
	// 4. Lengths, reserved bytes, flags, fields.
	fieldsLen := binary.LittleEndian.Uint32(b[4:])
	bodyLen := binary.LittleEndian.Uint32(b[8:])
	if fieldsLen > MaxFieldsLen {
		// The Errors table puts fields_len > 8,192 under TOO_LARGE.
		return nil, errorf(opDecode, CodeTooLarge, "fields_len %d, more than %d", fieldsLen, MaxFieldsLen)
	}
	if fieldsLen%8 != 0 {
		return nil, errorf(opDecode, CodeMalformed, "fields_len %d not a multiple of 8", fieldsLen)
	}
	if uint64(HeaderSize)+uint64(fieldsLen)+uint64(bodyLen) != uint64(len(b)) {
		return nil, errorf(opDecode, CodeMalformed, "header says %d+%d+%d bytes, packet has %d", HeaderSize, fieldsLen, bodyLen, len(b))
	}
	if b[14] != 0 || b[15] != 0 {
		return nil, errorf(opDecode, CodeMalformed, "reserved header bytes set")
	}
	if f.Flags&FlagsPorter != 0 {
		return nil, errorf(opDecode, CodeMalformed, "flag bits 8-15 set (%#04x)", uint16(f.Flags))
	}
	if !f.Type.Data() && f.Flags != 0 {
		return nil, errorf(opDecode, CodeMalformed, "%v with flags %#04x: only data frames carry flags", f.Type, uint16(f.Flags))
	}
	fs, err := parseFields(b[HeaderSize : HeaderSize+fieldsLen])
	if err != nil {
		return nil, err
	}
	f.Fields = fs
	f.Body = b[HeaderSize+fieldsLen:]
	if err := r.checkFieldPlaces(f); err != nil {
		return nil, err
	}
	// 5. The fd count. nfds above max_fds is TOO_LARGE (Errors table); a
	// type that takes no fds, or a count that differs from what arrived,
	// is MALFORMED.
	if int(f.NFDs) > r.maxFDs() {
		return nil, errorf(opDecode, CodeTooLarge, "nfds %d, more than max_fds %d", f.NFDs, r.maxFDs())
	}
	_, memfd := f.Field(FieldMemfd)
	takesFDs := f.Type.Data() || f.Type == TypeIntroduce
	if !takesFDs && (f.NFDs != 0 || memfd) {
		return nil, errorf(opDecode, CodeMalformed, "%v carries no fds (nfds %d)", f.Type, f.NFDs)
	}
	if fds >= 0 {
		want := int(f.NFDs)
		if memfd && !r.Monitor {
			want++
		}
		if fds != want {
			return nil, errorf(opDecode, CodeMalformed, "%d fds arrived, the frame says %d", fds, want)
		}
	}
	return f, nil
}

// checkType: type known, allowed on the path and in the state.
func (r *Rules) checkType(t Type) error {
	if !t.Known() {
		return errorf(opDecode, CodeMalformed, "unknown %v", t)
	}
	switch r.Path {
	case PathToMaster:
		if !t.Data() && !t.Request() {
			return errorf(opDecode, CodeMalformed, "%v sent to the master", t)
		}
		if !r.Joined && t != TypeHello {
			return errorf(opDecode, CodeNotJoined, "%v before HELLO", t)
		}
		if r.Joined && t == TypeHello {
			return errorf(opDecode, CodeNotJoined, "a second HELLO")
		}
	case PathFromMaster:
		if !t.Data() && !t.FromMaster() && !(r.Monitor && t.Request()) {
			return errorf(opDecode, CodeMalformed, "%v from the master", t)
		}
		// Before WELCOME only WELCOME or the FAIL refusing HELLO can come.
		if !r.Joined && t != TypeWelcome && t != TypeFail {
			return errorf(opDecode, CodeNotJoined, "%v before WELCOME", t)
		}
		// A monitor also sees copies of the WELCOMEs others get.
		if r.Joined && t == TypeWelcome && !r.Monitor {
			return errorf(opDecode, CodeNotJoined, "a second WELCOME")
		}
	case PathChannel:
		if !t.Data() && t != TypeEnd {
			return errorf(opDecode, CodeMalformed, "%v on a channel", t)
		}
	}
	return nil
}

// checkFieldPlaces: control frames and END carry no fields (a monitor's
// copy, from the master, carries MONITOR alone); SENDER_CRED and MONITOR
// come only from the master. All MALFORMED. The fixed-size fields
// (MEMFD, SENDER_CRED, MONITOR) must have their exact layout, reserved
// bytes zero: a layout, hence MALFORMED too.
func (r *Rules) checkFieldPlaces(f *Frame) error {
	for _, x := range f.Fields {
		switch x.Code {
		case FieldSenderCred, FieldMonitor:
			if r.fromEndpoint() {
				return errorf(opDecode, CodeMalformed, "%v from an endpoint", x.Code)
			}
		}
		if !f.Type.Data() && !(x.Code == FieldMonitor && r.Path != PathToMaster && r.Path != PathChannel) {
			return errorf(opDecode, CodeMalformed, "%v carries %v: control frames have no fields", f.Type, x.Code)
		}
		var err error
		switch x.Code {
		case FieldMemfd:
			_, err = ParseMemfd(x.Value)
		case FieldSenderCred:
			_, err = ParseSenderCred(x.Value)
		case FieldMonitor:
			_, err = ParseMonitor(x.Value)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Check checks a frame's values, the last step of "Validation order":
// unknown critical fields (UNKNOWN_FIELD), then serial and addresses,
// field values and limits, the fields a data type requires (INVALID),
// the MEMFD rule (BAD_MEMFD), the BLOOM size (BAD_BLOOM). [Rules.Decode]
// calls it; a sender may call it before encoding.
func (r *Rules) Check(f *Frame) error {
	for _, x := range f.Fields {
		if x.Code.Critical() && !x.Code.Known() {
			return errorf(opDecode, CodeUnknownField, "critical %v", x.Code)
		}
	}
	if f.Serial == 0 {
		return errorf(opDecode, CodeInvalid, "serial 0")
	}
	if f.Source > MaxAddress || f.Destination > MaxAddress {
		return errorf(opDecode, CodeInvalid, "reserved address (source %#x, destination %#x)", f.Source, f.Destination)
	}
	if f.Type.Request() && f.Destination != AddrBus {
		return errorf(opDecode, CodeInvalid, "%v to destination %d, not the bus", f.Type, f.Destination)
	}
	if f.Type == TypeHello && f.Source != AddrNone {
		return errorf(opDecode, CodeInvalid, "HELLO from source %d, not 0", f.Source)
	}
	if f.Type.FromMaster() && f.Source != AddrBus {
		return errorf(opDecode, CodeInvalid, "%v from source %d, not the bus", f.Type, f.Source)
	}
	if err := r.checkFieldValues(f); err != nil {
		return err
	}
	if f.Type.Data() {
		if err := r.checkData(f); err != nil {
			return err
		}
	}
	return r.checkAddresses(f)
}

// checkAddresses is what can be told of source and destination without
// the master's tables, after the INVALID checks ("then the values
// (INVALID, BAD_SOURCE, …)"): no endpoint owns 0 or 1, so a data frame
// or END from an endpoint with either as source is BAD_SOURCE (on a
// channel the receiver then closes it, "The rule"); and a routed data
// frame to 1 is UNKNOWN_ADDRESS ("The routed path"). Whether an endpoint
// owns its source, and the channel's binding, need state: the master's
// and the endpoint's.
func (r *Rules) checkAddresses(f *Frame) error {
	if !r.fromEndpoint() || !(f.Type.Data() || f.Type == TypeEnd) {
		return nil
	}
	if f.Source <= AddrBus {
		return errorf(opDecode, CodeBadSource, "%v from source %d", f.Type, f.Source)
	}
	if r.Path == PathToMaster && f.Destination == AddrBus {
		return errorf(opDecode, CodeUnknownAddress, "%v to the bus: the master answers control frames only", f.Type)
	}
	return nil
}

// fieldLimit is each known field's largest value, in bytes.
func (r *Rules) fieldLimit(c FieldCode) int {
	switch c {
	case FieldDestName, FieldInterface, FieldMember, FieldErrorName, FieldSignature:
		return MaxNameLen
	case FieldPath:
		return MaxPathLen
	case FieldArgs:
		return MaxArgsLen
	case FieldBloom:
		return r.bloomSize()
	case FieldMemfd, FieldSenderCred:
		return 16
	case FieldMonitor:
		return 32
	}
	if c >= FieldDBusFirst && c <= FieldDBusLast {
		return 1024
	}
	return 0xffff
}

// checkFieldValues: each known field's length and syntax.
func (r *Rules) checkFieldValues(f *Frame) error {
	for _, x := range f.Fields {
		if x.Code == FieldBloom {
			continue // its size is BAD_BLOOM, checked with the data rules
		}
		if n := len(x.Value); n > r.fieldLimit(x.Code) {
			return errorf(opDecode, CodeInvalid, "%v of %d bytes, more than %d", x.Code, n, r.fieldLimit(x.Code))
		}
		v := string(x.Value)
		var err error
		switch x.Code {
		case FieldDestName:
			err = CheckName(v)
		case FieldPath:
			err = CheckPath(v)
		case FieldInterface:
			err = CheckInterface(v)
		case FieldMember:
			err = CheckMember(v)
		case FieldErrorName:
			err = CheckErrorName(v)
		case FieldSignature:
			err = CheckSignature(v)
		case FieldArgs:
			if _, e := ParseArgs(x.Value); e != nil {
				return e
			}
		}
		if err != nil {
			return errorf(opDecode, CodeInvalid, "%v: %v", x.Code, err)
		}
	}
	return nil
}

// checkData: the required fields per data type, reply_serial, MEMFD and BLOOM.
func (r *Rules) checkData(f *Frame) error {
	has := func(c FieldCode) bool { _, ok := f.Field(c); return ok }
	need := func(cs ...FieldCode) error {
		for _, c := range cs {
			if !has(c) {
				return errorf(opDecode, CodeInvalid, "%v without %v", f.Type, c)
			}
		}
		return nil
	}
	var err error
	switch f.Type {
	case TypeCall:
		err = need(FieldMember)
	case TypeReply:
		if f.ReplySerial == 0 {
			err = errorf(opDecode, CodeInvalid, "REPLY with reply_serial 0")
		}
	case TypeError:
		err = need(FieldErrorName)
		if err == nil && f.ReplySerial == 0 {
			err = errorf(opDecode, CodeInvalid, "ERROR with reply_serial 0")
		}
	case TypeSignal:
		err = need(FieldPath, FieldInterface, FieldMember)
		if err == nil && f.Multicast() {
			if r.Path == PathChannel {
				err = errorf(opDecode, CodeInvalid, "multicast SIGNAL on a channel")
			} else {
				err = need(FieldBloom)
			}
		}
	}
	if err != nil {
		return err
	}
	if r.Path == PathChannel && f.Destination == AddrNone {
		return errorf(opDecode, CodeInvalid, "%v on a channel with destination 0", f.Type)
	}
	// A data frame goes to an address or a name; only a SIGNAL may have
	// neither (multicast). The doc says so of SIGNAL only ("Fields",
	// required fields); a CALL, REPLY or ERROR to nobody is taken as
	// INVALID here.
	if f.Type != TypeSignal && f.Destination == AddrNone && !has(FieldDestName) {
		return errorf(opDecode, CodeInvalid, "%v with neither destination nor DEST_NAME", f.Type)
	}
	if has(FieldMemfd) && len(f.Body) != 0 {
		return errorf(opDecode, CodeBadMemfd, "inline body of %d bytes with MEMFD", len(f.Body))
	}
	if v, ok := f.Field(FieldBloom); ok && f.Multicast() && len(v) != r.bloomSize() {
		return errorf(opDecode, CodeBadBloom, "BLOOM of %d bytes, bloom_size is %d", len(v), r.bloomSize())
	}
	return nil
}

// Multicast reports whether f is a multicast SIGNAL: destination 0 and
// no DEST_NAME.
func (f *Frame) Multicast() bool {
	_, named := f.Field(FieldDestName)
	return f.Type == TypeSignal && f.Destination == AddrNone && !named
}

// Marshal encodes f and checks the bytes as a receiver on r's path will
// (every check of [Rules.Decode] but the count of attached fds), so a
// sender finds out before sending what the receiver would refuse. The
// error's Op is "encode".
func (r *Rules) Marshal(f *Frame) ([]byte, error) {
	b, err := f.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if _, err := r.Decode(b, -1); err != nil {
		e := *err.(*Error)
		e.Op = "encode"
		return nil, &e
	}
	return b, nil
}
