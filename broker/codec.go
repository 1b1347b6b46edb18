package broker

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"
	"unicode/utf8"
)

// The client↔broker wire protocol, documented byte by byte in
// docs/protocol-broker.md. Every message is one SOCK_SEQPACKET packet that
// starts with a four-byte header: version, type, two reserved zero bytes.
// Integers are big-endian.

// Version is the protocol version this package speaks.
const Version = 1

// MaxMessage is the largest message either side sends or accepts, in bytes.
const MaxMessage = 2048

// MaxApp is the longest application name, in bytes.
const MaxApp = 255

// MaxErrorText is the longest error text in an ERROR message, in bytes.
const MaxErrorText = 1024

const headerLen = 4

// Message types.
const (
	msgRequest   = 'Q' // client: request a socket
	msgPickup    = 'P' // client: pick up a deferred token's socket
	msgRelease   = 'R' // client: release by token
	msgReleaseFD = 'F' // client: release by fd (one fd attached)
	msgList      = 'L' // client: list the cache
	msgGrant     = 'G' // broker: token (and fd) granted
	msgDone      = 'D' // broker: released
	msgError     = 'E' // broker: error
	msgSocket    = 'S' // broker: one cached socket (LIST)
	msgHolder    = 'H' // broker: one holder of the socket before (LIST)
	msgEnd       = 'Z' // broker: end of LIST
)

// msgKinds says, for each message type, who sends it and whether it may
// carry an fd. Only two may: RELEASE-FD, from the client, carries the
// socket it gives back (exactly one); GRANT, from the broker, carries the
// socket granted (none when deferred). A type not listed is unknown.
var msgKinds = map[byte]struct {
	fromClient bool // the client sends it; else the broker
	fd         bool // it may carry an fd
}{
	msgRequest:   {fromClient: true},
	msgPickup:    {fromClient: true},
	msgRelease:   {fromClient: true},
	msgReleaseFD: {fromClient: true, fd: true},
	msgList:      {fromClient: true},
	msgGrant:     {fd: true},
	msgDone:      {},
	msgError:     {},
	msgSocket:    {},
	msgHolder:    {},
	msgEnd:       {},
}

// sentByClient reports whether t is a type the client sends (and so the
// broker accepts).
func sentByClient(t byte) bool { return msgKinds[t].fromClient }

// mayCarryFD reports whether a message of type t may come with an fd.
func mayCarryFD(t byte) bool { return msgKinds[t].fd }

// grant is the body of a GRANT message.
type grant struct {
	Token Token
	Proto Proto
	Addr  netip.AddrPort
}

// message is one decoded message of any type.
type message struct {
	Type    byte
	Request Request    // msgRequest
	Token   Token      // msgPickup, msgRelease, msgGrant, msgDone
	Grant   grant      // msgGrant
	Err     Error      // msgError (Code, Errno, Text)
	Socket  SocketInfo // msgSocket (Holders unset; NHolders says how many follow)
	NHolder int        // msgSocket
	Holder  HolderInfo // msgHolder
	End     endInfo    // msgEnd
}

type endInfo struct {
	Sockets     int
	CreatorGone bool
}

// protoError is a decoding failure: a code and a reason.
type protoError struct {
	code Code
	text string
}

func (e *protoError) Error() string { return e.code.String() + ": " + e.text }

func malformed(format string, a ...any) error {
	return &protoError{CodeMalformed, fmt.Sprintf(format, a...)}
}

func invalid(format string, a ...any) error {
	return &protoError{CodeInvalid, fmt.Sprintf(format, a...)}
}

func header(t byte) []byte {
	b := make([]byte, headerLen, 64)
	b[0], b[1] = Version, t
	return b
}

func putAddr(b []byte, a netip.Addr) []byte {
	if a.Is4() {
		v := a.As4()
		return append(b, v[:]...)
	}
	v := a.As16()
	return append(b, v[:]...)
}

func family(a netip.Addr) byte {
	if a.Is4() {
		return 4
	}
	return 6
}

// encodeRequest builds a REQUEST.
func encodeRequest(r *Request) ([]byte, error) {
	if err := checkRequest(r); err != nil {
		return nil, err
	}
	a := r.Addr.Addr()
	b := header(msgRequest)
	var flags byte
	if r.Defer {
		flags |= 1
	}
	b = append(b, byte(r.Proto), family(a), byte(r.Share), flags)
	b = binary.BigEndian.AppendUint16(b, r.Addr.Port())
	b = putAddr(b, a)
	b = append(b, byte(len(r.App)))
	b = append(b, r.App...)
	return b, nil
}

func encodeToken(t byte, tok Token) []byte {
	return append(header(t), tok[:]...)
}

func encodeGrant(g *grant) []byte {
	b := append(header(msgGrant), g.Token[:]...)
	a := g.Addr.Addr()
	b = append(b, byte(g.Proto), family(a))
	b = binary.BigEndian.AppendUint16(b, g.Addr.Port())
	return putAddr(b, a)
}

func encodeError(c Code, errno syscall.Errno, text string) []byte {
	if len(text) > MaxErrorText {
		text = text[:MaxErrorText]
		for !utf8.ValidString(text) {
			text = text[:len(text)-1]
		}
	}
	b := header(msgError)
	b = binary.BigEndian.AppendUint16(b, uint16(c))
	b = binary.BigEndian.AppendUint32(b, uint32(errno))
	b = binary.BigEndian.AppendUint16(b, uint16(len(text)))
	return append(b, text...)
}

func encodeSocket(s *SocketInfo, holders int) []byte {
	a := s.Addr.Addr()
	b := header(msgSocket)
	b = append(b, byte(s.Proto), family(a))
	b = binary.BigEndian.AppendUint16(b, s.Addr.Port())
	b = binary.BigEndian.AppendUint32(b, uint32(s.Refs))
	b = binary.BigEndian.AppendUint32(b, uint32(min(s.Linger, 1<<32-1)))
	b = binary.BigEndian.AppendUint32(b, uint32(holders))
	return putAddr(b, a)
}

func encodeHolder(h *HolderInfo) []byte {
	b := header(msgHolder)
	b = binary.BigEndian.AppendUint32(b, uint32(h.PID))
	b = binary.BigEndian.AppendUint32(b, uint32(h.UID))
	b = binary.BigEndian.AppendUint32(b, uint32(h.GID))
	b = append(b, byte(h.State), byte(h.Share))
	b = append(b, h.TokenPrefix[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(min(max(h.Expires, 0), 1<<32-1)))
	b = append(b, byte(len(h.App)))
	return append(b, h.App...)
}

func encodeEnd(n int, creatorGone bool) []byte {
	b := binary.BigEndian.AppendUint32(header(msgEnd), uint32(n))
	var g byte
	if creatorGone {
		g = 1
	}
	return append(b, g)
}

// decode parses one message. It never panics; every failure is a
// *protoError saying what is wrong. Values are checked as well as the
// structure: a REQUEST with an unknown share mode is CodeInvalid, one cut
// short is CodeMalformed.
func decode(b []byte) (*message, error) {
	if len(b) > MaxMessage {
		return nil, &protoError{CodeTooLarge, fmt.Sprintf("message is %d bytes, more than %d", len(b), MaxMessage)}
	}
	if len(b) < headerLen {
		return nil, malformed("message is %d bytes, shorter than the %d-byte header", len(b), headerLen)
	}
	if b[0] != Version {
		return nil, &protoError{CodeVersion, fmt.Sprintf("version %d; this side speaks %d", b[0], Version)}
	}
	if b[2] != 0 || b[3] != 0 {
		return nil, malformed("reserved header bytes are %#x %#x, not zero", b[2], b[3])
	}
	m := &message{Type: b[1]}
	body := b[headerLen:]
	exact := func(n int) error {
		if len(body) != n {
			return malformed("%q message has a %d-byte body, want %d", m.Type, len(body), n)
		}
		return nil
	}
	atLeast := func(n int) error {
		if len(body) < n {
			return malformed("%q message has a %d-byte body, want at least %d", m.Type, len(body), n)
		}
		return nil
	}
	// addr reads a family byte's address from body[off:].
	addr := func(fam byte, off int) (netip.Addr, int, error) {
		var n int
		switch fam {
		case 4:
			n = 4
		case 6:
			n = 16
		default:
			return netip.Addr{}, 0, malformed("address family %d is neither 4 nor 6", fam)
		}
		if len(body) < off+n {
			return netip.Addr{}, 0, malformed("%q message cut short in its address", m.Type)
		}
		a, _ := netip.AddrFromSlice(body[off : off+n])
		return a, n, nil
	}
	switch m.Type {
	case msgRequest:
		if err := atLeast(6); err != nil {
			return nil, err
		}
		r := &m.Request
		r.Proto, r.Share = Proto(body[0]), Share(body[2])
		flags := body[3]
		port := binary.BigEndian.Uint16(body[4:6])
		a, n, err := addr(body[1], 6)
		if err != nil {
			return nil, err
		}
		off := 6 + n
		if len(body) < off+1 {
			return nil, malformed("request cut short before the application name's length")
		}
		nameLen := int(body[off])
		if len(body) != off+1+nameLen {
			return nil, malformed("request body is %d bytes; its application name's length says %d", len(body), off+1+nameLen)
		}
		r.App = string(body[off+1:])
		r.Addr = netip.AddrPortFrom(a, port)
		if flags&^1 != 0 {
			return nil, malformed("unknown request flags %#x", flags&^1)
		}
		r.Defer = flags&1 != 0
		if err := checkRequest(r); err != nil {
			return m, err
		}
	case msgPickup, msgRelease, msgDone:
		if err := exact(16); err != nil {
			return nil, err
		}
		copy(m.Token[:], body)
	case msgReleaseFD:
		if err := exact(0); err != nil {
			return nil, err
		}
	case msgList:
		if err := exact(0); err != nil {
			return nil, err
		}
	case msgGrant:
		if err := atLeast(20); err != nil {
			return nil, err
		}
		g := &m.Grant
		copy(g.Token[:], body)
		g.Proto = Proto(body[16])
		a, n, err := addr(body[17], 20)
		if err != nil {
			return nil, err
		}
		if err := exact(20 + n); err != nil {
			return nil, err
		}
		g.Addr = netip.AddrPortFrom(a, binary.BigEndian.Uint16(body[18:20]))
		m.Token = g.Token
	case msgError:
		if err := atLeast(8); err != nil {
			return nil, err
		}
		m.Err.Code = Code(binary.BigEndian.Uint16(body[0:2]))
		m.Err.Errno = syscall.Errno(binary.BigEndian.Uint32(body[2:6]))
		n := int(binary.BigEndian.Uint16(body[6:8]))
		if n > MaxErrorText {
			return nil, malformed("error text length %d exceeds %d", n, MaxErrorText)
		}
		if err := exact(8 + n); err != nil {
			return nil, err
		}
		m.Err.Text = string(body[8:])
	case msgSocket:
		if err := atLeast(16); err != nil {
			return nil, err
		}
		s := &m.Socket
		s.Proto = Proto(body[0])
		a, n, err := addr(body[1], 16)
		if err != nil {
			return nil, err
		}
		if err := exact(16 + n); err != nil {
			return nil, err
		}
		s.Addr = netip.AddrPortFrom(a, binary.BigEndian.Uint16(body[2:4]))
		s.Refs = int(binary.BigEndian.Uint32(body[4:8]))
		s.Linger = int64(binary.BigEndian.Uint32(body[8:12]))
		m.NHolder = int(binary.BigEndian.Uint32(body[12:16]))
	case msgHolder:
		if err := atLeast(23); err != nil {
			return nil, err
		}
		h := &m.Holder
		h.PID = int(binary.BigEndian.Uint32(body[0:4]))
		h.UID = int(binary.BigEndian.Uint32(body[4:8]))
		h.GID = int(binary.BigEndian.Uint32(body[8:12]))
		h.State, h.Share = HolderState(body[12]), Share(body[13])
		copy(h.TokenPrefix[:], body[14:18])
		h.Expires = int64(binary.BigEndian.Uint32(body[18:22]))
		n := int(body[22])
		if err := exact(23 + n); err != nil {
			return nil, err
		}
		h.App = string(body[23:])
	case msgEnd:
		if err := exact(5); err != nil {
			return nil, err
		}
		m.End.Sockets = int(binary.BigEndian.Uint32(body[0:4]))
		if body[4] > 1 {
			return nil, malformed("END creator state %d is neither 0 nor 1", body[4])
		}
		m.End.CreatorGone = body[4] == 1
	default:
		return nil, malformed("unknown message type %#x", m.Type)
	}
	return m, nil
}
