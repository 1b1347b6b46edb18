package cap

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Limits of protocol version 1 (docs/protocol-cap.md, "Limits, in one place").
const (
	// MaxFrame is the longest frame, header included, in bytes.
	MaxFrame = 65536
	// MaxFDs is the most fds one frame carries (253 per packet).
	MaxFDs = 1024
	// MaxDepth is the deepest nesting of values.
	MaxDepth = 32
	// MaxCalls is the most calls a server runs at once for one session.
	MaxCalls = 64

	version      = 1
	headerLen    = 24
	fdsPerPacket = 253
	maxNameLen   = 255
)

// Frame types.
const (
	tOpen    = 1
	tOpened  = 2
	tCall    = 3
	tReply   = 4
	tError   = 5
	tCancel  = 6
	tRevoked = 7
	tFDS     = 8
	tClose   = 9
)

var typeNames = [...]string{"", "OPEN", "OPENED", "CALL", "REPLY", "ERROR", "CANCEL", "REVOKED", "FDS", "CLOSE"}

// header is a frame's fixed 24 bytes.
type header struct {
	typ     uint8
	flags   uint16
	nfds    uint16
	nameLen uint16
	id      uint64
	bodyLen uint32
	code    uint32
}

// errMalformed is the cause of every frame that breaks the rules.
var errMalformed = errors.New("malformed frame")

func malformed(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errMalformed}, a...)...)
}

// appendFrame appends the frame (header, name, body) to b.
func appendFrame(b []byte, h header, name string, body []byte) []byte {
	var hb [headerLen]byte
	hb[0] = version
	hb[1] = h.typ
	binary.LittleEndian.PutUint16(hb[2:], h.flags)
	binary.LittleEndian.PutUint16(hb[4:], h.nfds)
	binary.LittleEndian.PutUint16(hb[6:], uint16(len(name)))
	binary.LittleEndian.PutUint64(hb[8:], h.id)
	binary.LittleEndian.PutUint32(hb[16:], uint32(len(body)))
	binary.LittleEndian.PutUint32(hb[20:], h.code)
	b = append(b, hb[:]...)
	b = append(b, name...)
	return append(b, body...)
}

// parseFrame checks one packet against the frame rules that do not depend
// on the socket it came on, and returns its header, name and body (slices
// of p).
func parseFrame(p []byte) (h header, name, body []byte, err error) {
	if len(p) < headerLen {
		return h, nil, nil, malformed("%d bytes, shorter than the header", len(p))
	}
	if p[0] != version {
		return h, nil, nil, malformed("version %d", p[0])
	}
	h = header{
		typ:     p[1],
		flags:   binary.LittleEndian.Uint16(p[2:]),
		nfds:    binary.LittleEndian.Uint16(p[4:]),
		nameLen: binary.LittleEndian.Uint16(p[6:]),
		id:      binary.LittleEndian.Uint64(p[8:]),
		bodyLen: binary.LittleEndian.Uint32(p[16:]),
		code:    binary.LittleEndian.Uint32(p[20:]),
	}
	if h.typ == 0 || int(h.typ) >= len(typeNames) {
		return h, nil, nil, malformed("unknown type %d", h.typ)
	}
	if h.flags != 0 {
		return h, nil, nil, malformed("%s: flags %#x", typeNames[h.typ], h.flags)
	}
	if uint64(len(p)) != headerLen+uint64(h.nameLen)+uint64(h.bodyLen) {
		return h, nil, nil, malformed("%s: %d bytes, header says %d", typeNames[h.typ], len(p), headerLen+uint64(h.nameLen)+uint64(h.bodyLen))
	}
	if h.nfds > MaxFDs {
		return h, nil, nil, malformed("%s: %d fds", typeNames[h.typ], h.nfds)
	}
	name = p[headerLen : headerLen+int(h.nameLen)]
	body = p[headerLen+int(h.nameLen):]
	// What each type allows: fds, name, id, body, code.
	var okFDs, okName, okID, okBody, okCode bool
	switch h.typ {
	case tOpen:
		if h.nfds != 1 {
			return h, nil, nil, malformed("OPEN with %d fds", h.nfds)
		}
		okFDs = true
	case tOpened:
		if h.bodyLen != 8 {
			return h, nil, nil, malformed("OPENED with a %d-byte body", h.bodyLen)
		}
		okBody = true
	case tCall:
		if !validName(name) {
			return h, nil, nil, malformed("CALL: bad method name %q", name)
		}
		okFDs, okName, okID, okBody = true, true, true, true
	case tReply:
		okFDs, okID, okBody = true, true, true
	case tError:
		if h.code == 0 {
			return h, nil, nil, malformed("ERROR with code 0")
		}
		okID, okBody, okCode = true, true, true
	case tCancel:
		okID = true
	case tRevoked, tClose:
	case tFDS:
		if h.nfds == 0 || h.nfds > fdsPerPacket {
			return h, nil, nil, malformed("FDS with %d fds", h.nfds)
		}
		okFDs = true
	}
	switch {
	case !okFDs && h.nfds != 0:
		return h, nil, nil, malformed("%s with %d fds", typeNames[h.typ], h.nfds)
	case !okName && h.nameLen != 0:
		return h, nil, nil, malformed("%s with a name", typeNames[h.typ])
	case okID && h.id == 0, !okID && h.id != 0:
		return h, nil, nil, malformed("%s with id %d", typeNames[h.typ], h.id)
	case !okBody && h.bodyLen != 0:
		return h, nil, nil, malformed("%s with a body", typeNames[h.typ])
	case !okCode && h.code != 0:
		return h, nil, nil, malformed("%s with code %d", typeNames[h.typ], h.code)
	}
	return h, name, body, nil
}

// validName reports whether b is a method name: 1–255 bytes of
// [A-Za-z_][A-Za-z0-9_]*.
func validName[T string | []byte](b T) bool {
	if len(b) == 0 || len(b) > maxNameLen {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
