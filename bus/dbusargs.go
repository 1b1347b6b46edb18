package bus

import (
	"encoding/binary"
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxSignature is the longest D-Bus signature, in bytes (the SIGNATURE
// field's limit).
const maxSignature = 255

// Strings marshals args as a D-Bus body of n strings, little-endian: for
// each, zero padding to a 4-byte boundary, its length as a u32, its bytes
// and a NUL. sig is "s" repeated n times ("" for no args), for the
// message's Signature. The bus does not look at bodies; this is what
// `porter bus call` sends and `porter bus serve` reads. An arg with a NUL
// or invalid UTF-8, or more than 255 args, gives a body ParseStrings
// refuses, as a D-Bus peer would: check with ValidStrings first.
func Strings(args ...string) (sig string, body []byte) {
	n := 0
	for _, a := range args {
		n = align4(n) + 4 + len(a) + 1
	}
	body = make([]byte, 0, n)
	for _, a := range args {
		for len(body)%4 != 0 {
			body = append(body, 0)
		}
		body = binary.LittleEndian.AppendUint32(body, uint32(len(a)))
		body = append(body, a...)
		body = append(body, 0)
	}
	return strings.Repeat("s", len(args)), body
}

// ValidStrings reports, as an *Error with CodeInvalid, why args cannot be
// D-Bus strings (a NUL, invalid UTF-8, more than 255 of them), or nil.
func ValidStrings(args ...string) error {
	if len(args) > maxSignature {
		return errorf("strings", CodeInvalid, "%d args: a signature holds at most %d", len(args), maxSignature)
	}
	for i, a := range args {
		if err := checkDBusString(a); err != "" {
			return errorf("strings", CodeInvalid, "arg %d: %s", i, err)
		}
	}
	return nil
}

// ParseStrings reads a D-Bus body of strings as Strings writes it. It
// refuses, as an *Error with CodeInvalid, a signature that is not all 's'
// (or longer than 255), and a body that is malformed: nonzero or missing
// padding, a length past the end, a missing NUL terminator, a NUL or
// invalid UTF-8 inside a string, or bytes left over after the last one.
func ParseStrings(sig string, body []byte) ([]string, error) {
	if len(sig) > maxSignature {
		return nil, errorf("parse strings", CodeInvalid, "signature of %d bytes, over %d", len(sig), maxSignature)
	}
	if i := strings.IndexFunc(sig, func(r rune) bool { return r != 's' }); i >= 0 {
		return nil, errorf("parse strings", CodeInvalid, "signature %q is not all strings (byte %d)", sig, i)
	}
	out := make([]string, 0, len(sig))
	off := 0
	for i := range len(sig) {
		for ; off%4 != 0; off++ {
			if off >= len(body) {
				return nil, errorf("parse strings", CodeInvalid, "arg %d: body ends in padding at byte %d", i, off)
			}
			if body[off] != 0 {
				return nil, errorf("parse strings", CodeInvalid, "arg %d: nonzero padding at byte %d", i, off)
			}
		}
		if len(body)-off < 4 {
			return nil, errorf("parse strings", CodeInvalid, "arg %d: no room for its length at byte %d", i, off)
		}
		n := uint64(binary.LittleEndian.Uint32(body[off:]))
		off += 4
		if n+1 > uint64(len(body)-off) {
			return nil, errorf("parse strings", CodeInvalid, "arg %d: length %d runs past the body's %d bytes", i, n, len(body))
		}
		s := string(body[off : off+int(n)])
		if body[off+int(n)] != 0 {
			return nil, errorf("parse strings", CodeInvalid, "arg %d: no NUL after its %d bytes", i, n)
		}
		if err := checkDBusString(s); err != "" {
			return nil, errorf("parse strings", CodeInvalid, "arg %d: %s", i, err)
		}
		out = append(out, s)
		off += int(n) + 1
	}
	if off != len(body) {
		return nil, errorf("parse strings", CodeInvalid, "%d bytes after the last string", len(body)-off)
	}
	return out, nil
}

// checkDBusString says what keeps s from being a D-Bus string, or "".
func checkDBusString(s string) string {
	if i := strings.IndexByte(s, 0); i >= 0 {
		return "a NUL at byte " + strconv.Itoa(i)
	}
	if !utf8.ValidString(s) {
		return "not UTF-8"
	}
	return ""
}

func align4(n int) int { return (n + 3) &^ 3 }
