package bus

import (
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"
)

// String limits (docs/protocol-bus.md, "Names").
const (
	MaxNameLen      = 255  // well-known name, interface, member, error name, signature
	MaxPathLen      = 1024 // object path
	MaxLabelLen     = 64   // HELLO's label
	MaxFailTextLen  = 1024 // FAIL's text
	addressPrefix   = ":1."
	busAddressText  = ":bus"
	maxAddressDigit = 19
)

// CheckName checks a well-known name: 1–255 bytes, two or more elements
// separated by '.', each non-empty, of [A-Za-z0-9_-], not starting with
// a digit. A string starting with ':' is an address, never a name.
func CheckName(s string) error { return checkDotted(s, "name", true) }

// CheckInterface checks an interface name: as a name, without '-'.
func CheckInterface(s string) error { return checkDotted(s, "interface", false) }

// CheckErrorName checks an error name: as an interface.
func CheckErrorName(s string) error { return checkDotted(s, "error name", false) }

func checkDotted(s, what string, dash bool) error {
	switch {
	case s == "":
		return errors.New(what + " empty")
	case len(s) > MaxNameLen:
		return errors.New(what + " longer than 255 bytes")
	case s[0] == ':':
		return errors.New(what + " " + strconv.Quote(s) + " starts with ':' (an address)")
	}
	elems := strings.Split(s, ".")
	if len(elems) < 2 {
		return errors.New(what + " " + strconv.Quote(s) + " has fewer than two elements")
	}
	for _, e := range elems {
		if e == "" {
			return errors.New(what + " " + strconv.Quote(s) + " has an empty element")
		}
		if e[0] >= '0' && e[0] <= '9' {
			return errors.New(what + " " + strconv.Quote(s) + ": element starts with a digit")
		}
		for i := 0; i < len(e); i++ {
			if c := e[i]; !alnum(c) && c != '_' && !(dash && c == '-') {
				return errors.New(what + " " + strconv.Quote(s) + ": bad character " + strconv.QuoteRune(rune(c)))
			}
		}
	}
	return nil
}

// ReservedName reports whether a name is the bus's own:
// org.freedesktop.DBus, porter, and every name under porter.
func ReservedName(s string) bool {
	return s == "org.freedesktop.DBus" || s == "porter" || strings.HasPrefix(s, "porter.")
}

// CheckMember checks a member name: [A-Za-z_][A-Za-z0-9_]*, 1–255 bytes.
func CheckMember(s string) error {
	if s == "" || len(s) > MaxNameLen {
		return errors.New("member of " + strconv.Itoa(len(s)) + " bytes (1-255)")
	}
	if s[0] >= '0' && s[0] <= '9' {
		return errors.New("member " + strconv.Quote(s) + " starts with a digit")
	}
	for i := 0; i < len(s); i++ {
		if !alnum(s[i]) && s[i] != '_' {
			return errors.New("member " + strconv.Quote(s) + ": bad character " + strconv.QuoteRune(rune(s[i])))
		}
	}
	return nil
}

// CheckPath checks an object path: "/", or '/'-separated non-empty
// elements of [A-Za-z0-9_], no trailing '/'; at most 1,024 bytes.
func CheckPath(s string) error {
	switch {
	case len(s) > MaxPathLen:
		return errors.New("path longer than 1024 bytes")
	case s == "/":
		return nil
	case s == "" || s[0] != '/':
		return errors.New("path " + strconv.Quote(s) + " does not start with '/'")
	}
	for _, e := range strings.Split(s[1:], "/") {
		if e == "" {
			return errors.New("path " + strconv.Quote(s) + " has an empty element")
		}
		for i := 0; i < len(e); i++ {
			if !alnum(e[i]) && e[i] != '_' {
				return errors.New("path " + strconv.Quote(s) + ": bad character " + strconv.QuoteRune(rune(e[i])))
			}
		}
	}
	return nil
}

// CheckSignature checks a signature: the master checks its length only.
func CheckSignature(s string) error {
	if len(s) > MaxNameLen {
		return errors.New("signature longer than 255 bytes")
	}
	return nil
}

// CheckLabel checks HELLO's label: UTF-8 without control characters (C0,
// DEL, C1), at most 64 bytes; it may be empty.
func CheckLabel(s string) error {
	if len(s) > MaxLabelLen {
		return errors.New("label longer than 64 bytes")
	}
	if !utf8.ValidString(s) {
		return errors.New("label not UTF-8")
	}
	for _, r := range s {
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return errors.New("label has a control character")
		}
	}
	return nil
}

// CheckMatchArg checks a match argument (and an ARGS string): UTF-8
// without NUL, at most 1,024 bytes.
func CheckMatchArg(s string) error {
	if len(s) > MaxArgLen {
		return errors.New("argument longer than 1024 bytes")
	}
	if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
		return errors.New("argument not UTF-8 without NUL")
	}
	return nil
}

// CheckText checks text for people (FAIL, ERROR bodies by convention):
// UTF-8 without NUL.
func CheckText(s string) error {
	if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
		return errors.New("text not UTF-8 without NUL")
	}
	return nil
}

func alnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// FormatAddress prints an address as porter's tools do: ":1.N", ":bus"
// for the bus, "" for none.
func FormatAddress(a uint64) string {
	switch a {
	case AddrNone:
		return ""
	case AddrBus:
		return busAddressText
	}
	return addressPrefix + strconv.FormatUint(a, 10)
}

// ParseAddress reads an endpoint address in its text form: exactly ":1."
// and 1–19 decimal digits without a leading zero, value 2 … 2⁶³−1.
func ParseAddress(s string) (uint64, error) {
	d, ok := strings.CutPrefix(s, addressPrefix)
	if !ok || d == "" || len(d) > maxAddressDigit || (d[0] == '0') {
		return 0, &Error{Op: "parse address", Code: CodeInvalid, Text: strconv.Quote(s) + " is not :1.N"}
	}
	for i := 0; i < len(d); i++ {
		if d[i] < '0' || d[i] > '9' {
			return 0, &Error{Op: "parse address", Code: CodeInvalid, Text: strconv.Quote(s) + " is not :1.N"}
		}
	}
	a, err := strconv.ParseUint(d, 10, 64)
	if err != nil || a < 2 || a > MaxAddress {
		return 0, &Error{Op: "parse address", Code: CodeInvalid, Text: strconv.Quote(s) + ": address out of 2 … 2^63-1"}
	}
	return a, nil
}
