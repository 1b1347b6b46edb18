package bus

import (
	"encoding/binary"
)

// Control frame bodies (docs/protocol-bus.md, "Joining" and "Answers"
// here, "Names" to "Looking up and listing" in requests.go). Each XxxBody
// type has Encode, which builds the body, and a ParseXxx, which reads
// one: a body shorter than its layout is MALFORMED, a longer one is
// accepted and the extra bytes ignored (that is how later versions add
// fields). Reserved bytes and unused flag bits
// must be 0 (MALFORMED); strings must have their syntax (INVALID).

const opBody = "body"

func short(t Type, n, want int) error {
	return errorf(opBody, CodeMalformed, "%v body of %d bytes, shorter than %d", t, n, want)
}

func le16(b []byte) uint16 { return binary.LittleEndian.Uint16(b) }
func le32(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }
func le64(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }

// HELLO flags.
const (
	HelloAcceptFDs   uint32 = 1 << 0 // the endpoint accepts fds
	HelloAcceptMemfd uint32 = 1 << 1 // the endpoint accepts memfd payloads
	HelloNoDirect    uint32 = 1 << 2 // the endpoint takes no channels
	helloFlags              = HelloAcceptFDs | HelloAcceptMemfd | HelloNoDirect
)

// HelloBody is HELLO's body.
type HelloBody struct {
	Flags uint32 // HelloAcceptFDs, HelloAcceptMemfd, HelloNoDirect
	Label string // what `porter bus names` shows; 0–64 bytes
}

// Encode builds the body.
func (h HelloBody) Encode() []byte {
	b := binary.LittleEndian.AppendUint32(nil, h.Flags)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(h.Label)))
	b = append(b, 0, 0)
	return append(b, h.Label...)
}

// ParseHello reads HELLO's body.
func ParseHello(b []byte) (HelloBody, error) {
	if len(b) < 8 {
		return HelloBody{}, short(TypeHello, len(b), 8)
	}
	h := HelloBody{Flags: le32(b)}
	n := int(le16(b[4:]))
	if h.Flags&^helloFlags != 0 || b[6] != 0 || b[7] != 0 {
		return HelloBody{}, errorf(opBody, CodeMalformed, "HELLO: unknown flags %#x or reserved bytes set", h.Flags)
	}
	if n > MaxLabelLen {
		return HelloBody{}, errorf(opBody, CodeInvalid, "HELLO: label of %d bytes, more than %d", n, MaxLabelLen)
	}
	if len(b) < 8+n {
		return HelloBody{}, short(TypeHello, len(b), 8+n)
	}
	h.Label = string(b[8 : 8+n])
	if err := CheckLabel(h.Label); err != nil {
		return HelloBody{}, errorf(opBody, CodeInvalid, "HELLO: %v", err)
	}
	return h, nil
}

// WELCOME flags.
const (
	WelcomeDirect  uint16 = 1 << 0 // direct channels enabled for this endpoint
	WelcomeFDs     uint16 = 1 << 1 // fds accepted (echo)
	WelcomeMemfd   uint16 = 1 << 2 // memfds accepted (echo)
	WelcomeMonitor uint16 = 1 << 3 // a monitor is attached: new pairs are routed
)

// WelcomeSize is WELCOME's body in version 1.
const WelcomeSize = 104

// WelcomeBody is WELCOME's body: the endpoint's address and the bus's
// parameters, which the endpoint must use instead of the defaults.
type WelcomeBody struct {
	Address        uint64   // the endpoint's primary address
	BusID          [16]byte // 128 random bits, fixed for the bus's life
	MaxFrame       uint32   // bytes per frame (an endpoint's: MaxFrame − 64)
	MaxFDs         uint16   // application fds per frame
	BloomSize      uint16   // bytes of a bloom, a power of two, 8–256
	BloomK         uint8    // bit positions per property
	MaxArgs        uint8    // ARGS entries
	Flags          uint16   // WelcomeDirect, WelcomeFDs, WelcomeMemfd, WelcomeMonitor
	MemfdThreshold uint32   // bodies this large should go as a memfd
	MaxMemfd       uint64   // the largest memfd payload
	PID, UID, GID  uint32   // the endpoint's credentials as the master verified them
	QueueMsgs      uint32   // frames the master holds for one receiver
	QueueBytes     uint32   // bytes the master holds for one receiver
	ShareMsgs      uint32   // frames of one sender in one receiver's queue
	ShareBytes     uint32   // bytes of one sender in one receiver's queue
	SenderMsgs     uint32   // frames of one sender held at the master
	SenderBytes    uint32   // bytes of one sender held at the master
	FDsInFlight    uint32   // fds of one sender held at the master
	PendingCalls   uint32   // routed calls of one endpoint awaiting a reply
	MaxNames       uint16   // names owned or queued for, per endpoint
	MaxAddresses   uint16   // addresses per endpoint
	MaxMatches     uint32   // matches per endpoint
	MaxChannels    uint32   // channels per endpoint
}

// DefaultWelcome is WELCOME with the doc's defaults (memfd_threshold the
// inline maximum of a frame without fields: BenchmarkBusPayload found the
// inline copy faster than any memfd at every size that fits inline, see
// docs/protocol-bus.md "Left to measure"); the master fills in the
// address, bus id, credentials and flags.
func DefaultWelcome() WelcomeBody {
	return WelcomeBody{
		MaxFrame: DefaultMaxFrame, MaxFDs: DefaultMaxFDs, BloomSize: DefaultBloomSize,
		BloomK: DefaultBloomK, MaxArgs: MaxArgs,
		MemfdThreshold: DefaultMaxFrame - MasterRoom - HeaderSize, MaxMemfd: 256 << 20,
		QueueMsgs: 4096, QueueBytes: 16 << 20, ShareMsgs: 256, ShareBytes: 1 << 20,
		SenderMsgs: 1024, SenderBytes: 8 << 20, FDsInFlight: 256, PendingCalls: 1024,
		MaxNames: 256, MaxAddresses: 16, MaxMatches: 1024, MaxChannels: 4096,
	}
}

// Encode builds the 104-byte body.
func (w WelcomeBody) Encode() []byte {
	b := make([]byte, WelcomeSize)
	binary.LittleEndian.PutUint64(b, w.Address)
	copy(b[8:24], w.BusID[:])
	binary.LittleEndian.PutUint32(b[24:], w.MaxFrame)
	binary.LittleEndian.PutUint16(b[28:], w.MaxFDs)
	binary.LittleEndian.PutUint16(b[30:], w.BloomSize)
	b[32], b[33] = w.BloomK, w.MaxArgs
	binary.LittleEndian.PutUint16(b[34:], w.Flags)
	binary.LittleEndian.PutUint32(b[36:], w.MemfdThreshold)
	binary.LittleEndian.PutUint64(b[40:], w.MaxMemfd)
	for i, v := range []uint32{w.PID, w.UID, w.GID, w.QueueMsgs, w.QueueBytes, w.ShareMsgs,
		w.ShareBytes, w.SenderMsgs, w.SenderBytes, w.FDsInFlight, w.PendingCalls} {
		binary.LittleEndian.PutUint32(b[48+4*i:], v)
	}
	binary.LittleEndian.PutUint16(b[92:], w.MaxNames)
	binary.LittleEndian.PutUint16(b[94:], w.MaxAddresses)
	binary.LittleEndian.PutUint32(b[96:], w.MaxMatches)
	binary.LittleEndian.PutUint32(b[100:], w.MaxChannels)
	return b
}

// ParseWelcome reads WELCOME's body and checks the parameters' ranges:
// max_frame 48+64 … 196,608, max_fds ≤ 252, the bloom parameters as
// [NewBloomParams], an address of an endpoint.
func ParseWelcome(b []byte) (WelcomeBody, error) {
	if len(b) < WelcomeSize {
		return WelcomeBody{}, short(TypeWelcome, len(b), WelcomeSize)
	}
	w := WelcomeBody{
		Address: le64(b), MaxFrame: le32(b[24:]), MaxFDs: le16(b[28:]), BloomSize: le16(b[30:]),
		BloomK: b[32], MaxArgs: b[33], Flags: le16(b[34:]), MemfdThreshold: le32(b[36:]),
		MaxMemfd: le64(b[40:]), MaxNames: le16(b[92:]), MaxAddresses: le16(b[94:]),
		MaxMatches: le32(b[96:]), MaxChannels: le32(b[100:]),
	}
	copy(w.BusID[:], b[8:24])
	for i, p := range []*uint32{&w.PID, &w.UID, &w.GID, &w.QueueMsgs, &w.QueueBytes, &w.ShareMsgs,
		&w.ShareBytes, &w.SenderMsgs, &w.SenderBytes, &w.FDsInFlight, &w.PendingCalls} {
		*p = le32(b[48+4*i:])
	}
	switch {
	case w.Flags&^0xf != 0:
		return WelcomeBody{}, errorf(opBody, CodeMalformed, "WELCOME: unknown flags %#x", w.Flags)
	case w.Address < 2 || w.Address > MaxAddress:
		return WelcomeBody{}, errorf(opBody, CodeInvalid, "WELCOME: address %d", w.Address)
	case w.MaxFrame < HeaderSize+MasterRoom || w.MaxFrame > MaxMaxFrame:
		return WelcomeBody{}, errorf(opBody, CodeInvalid, "WELCOME: max_frame %d", w.MaxFrame)
	case w.MaxFDs > MaxMaxFDs:
		return WelcomeBody{}, errorf(opBody, CodeInvalid, "WELCOME: max_fds %d", w.MaxFDs)
	case w.MaxArgs > MaxArgs:
		return WelcomeBody{}, errorf(opBody, CodeInvalid, "WELCOME: max_args %d", w.MaxArgs)
	}
	if _, err := NewBloomParams(int(w.BloomSize), int(w.BloomK)); err != nil {
		return WelcomeBody{}, errorf(opBody, CodeInvalid, "WELCOME: %v", err)
	}
	return w, nil
}

// Rules is the Rules an endpoint that got this WELCOME reads its master
// connection with.
func (w WelcomeBody) Rules() Rules {
	return Rules{Path: PathFromMaster, Joined: true, MaxFrame: int(w.MaxFrame), MaxFDs: int(w.MaxFDs), BloomSize: int(w.BloomSize)}
}

// DoneBody is DONE's body: two values whose meaning depends on the request.
type DoneBody struct {
	Value, Value2 uint64 // per request; 0 when none
}

// Encode builds the 16-byte body.
func (d DoneBody) Encode() []byte {
	return binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, d.Value), d.Value2)
}

// ParseDone reads DONE's body.
func ParseDone(b []byte) (DoneBody, error) {
	if len(b) < 16 {
		return DoneBody{}, short(TypeDone, len(b), 16)
	}
	return DoneBody{le64(b), le64(b[8:])}, nil
}

// FailBody is FAIL's body: a code, an errno and a text for people.
type FailBody struct {
	Code  Code   // the protocol's code
	Errno uint32 // a Linux errno, 0 if none
	Text  string // for people, at most 1,024 bytes
}

// Encode builds the body; a text longer than 1,024 bytes is cut there.
func (f FailBody) Encode() []byte {
	t := f.Text
	if len(t) > MaxFailTextLen {
		t = t[:MaxFailTextLen]
	}
	b := binary.LittleEndian.AppendUint16(nil, uint16(f.Code))
	b = append(b, 0, 0)
	b = binary.LittleEndian.AppendUint32(b, f.Errno)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(t)))
	b = append(b, 0, 0)
	return append(b, t...)
}

// ParseFail reads FAIL's body. An unknown code is kept (a later version
// may add codes); the text must be UTF-8.
func ParseFail(b []byte) (FailBody, error) {
	if len(b) < 12 {
		return FailBody{}, short(TypeFail, len(b), 12)
	}
	f := FailBody{Code: Code(le16(b)), Errno: le32(b[4:])}
	n := int(le16(b[8:]))
	if le16(b[2:]) != 0 || le16(b[10:]) != 0 {
		return FailBody{}, errorf(opBody, CodeMalformed, "FAIL: reserved bytes set")
	}
	if n > MaxFailTextLen {
		return FailBody{}, errorf(opBody, CodeInvalid, "FAIL: text of %d bytes", n)
	}
	if len(b) < 12+n {
		return FailBody{}, short(TypeFail, len(b), 12+n)
	}
	f.Text = string(b[12 : 12+n])
	if err := CheckText(f.Text); err != nil {
		return FailBody{}, errorf(opBody, CodeInvalid, "FAIL: %v", err)
	}
	return f, nil
}

// Err is the FAIL as an *Error for op, carrying its errno.
func (f FailBody) Err(op string) *Error {
	e := &Error{Op: op, Code: f.Code, Text: f.Text}
	if f.Errno != 0 {
		e.Errno = errnoOf(f.Errno)
	}
	return e
}
