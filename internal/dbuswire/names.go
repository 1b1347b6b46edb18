package dbuswire

import "unicode/utf8"

// maxName is the spec's limit on bus names, interface names, member names
// and error names.
const maxName = 255

// ValidObjectPath reports whether s is an object path: "/" or '/'
// followed by non-empty elements of [A-Za-z0-9_] separated by '/', with
// no trailing '/'.
func ValidObjectPath(s string) bool {
	if s == "" || s[0] != '/' {
		return false
	}
	if s == "/" {
		return true
	}
	prev := byte('/')
	for i := 1; i < len(s); i++ {
		c := s[i]
		if c == '/' {
			if prev == '/' {
				return false
			}
		} else if !isAlnum(c) && c != '_' {
			return false
		}
		prev = c
	}
	return prev != '/'
}

// ValidInterface reports whether s is an interface name: at most 255
// bytes, two or more elements separated by '.', each of [A-Za-z0-9_] not
// starting with a digit.
func ValidInterface(s string) bool { return validDotted(s, false, false) }

// ValidErrorName reports whether s is an error name; error names follow
// the interface name rules.
func ValidErrorName(s string) bool { return validDotted(s, false, false) }

// ValidMember reports whether s is a member name: 1 to 255 bytes of
// [A-Za-z0-9_], not starting with a digit.
func ValidMember(s string) bool {
	if s == "" || len(s) > maxName || isDigit(s[0]) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '_' {
			return false
		}
	}
	return true
}

// ValidUniqueName reports whether s is a unique connection name: ':'
// followed by two or more elements of [A-Za-z0-9_-] separated by '.'.
func ValidUniqueName(s string) bool {
	return len(s) > 1 && s[0] == ':' && len(s) <= maxName && validDotted(s[1:], true, true)
}

// ValidBusName reports whether s is a bus name: a unique name or a
// well-known name (two or more elements of [A-Za-z0-9_-] separated by '.',
// no element starting with a digit), at most 255 bytes.
func ValidBusName(s string) bool {
	if len(s) > 0 && s[0] == ':' {
		return ValidUniqueName(s)
	}
	return validDotted(s, true, false)
}

// validDotted checks a name of two or more '.'-separated non-empty
// elements; dash allows '-', digits allows an element to start with a digit.
func validDotted(s string, dash, digits bool) bool {
	if s == "" || len(s) > maxName {
		return false
	}
	elems := 1
	start := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if start {
				return false
			}
			elems++
			start = true
			continue
		case isDigit(c):
			if start && !digits {
				return false
			}
		case isAlpha(c) || c == '_' || (dash && c == '-'):
		default:
			return false
		}
		start = false
	}
	return !start && elems >= 2
}

// validNamespace checks an arg0namespace value: a bus name or interface
// name that may have a single element.
func validNamespace(s string) bool {
	if s == "" || s[0] == ':' {
		return false
	}
	return validDotted(s+".x", true, false)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
func isAlpha(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }
func isAlnum(c byte) bool { return isAlpha(c) || isDigit(c) }

// maxDepth is the spec's limit of 32 nested arrays and 32 nested structs.
const maxDepth = 32

// ValidSignature reports whether s is a signature: at most 255 bytes of
// zero or more single complete types, with structs non-empty, dict
// entries only as array elements with a basic key type and one value
// type, and no more than 32 nested arrays or 32 nested structs.
func ValidSignature(s string) bool {
	if len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); {
		n := completeType(s[i:], 0, 0)
		if n <= 0 {
			return false
		}
		i += n
	}
	return true
}

// validSingle reports whether s is exactly one single complete type, as a
// variant's signature must be.
func validSingle(s string) bool {
	return len(s) <= 255 && s != "" && completeType(s, 0, 0) == len(s)
}

// completeType returns the length of the single complete type at the start
// of s, or 0 if there is none.
func completeType(s string, arrays, structs int) int {
	if s == "" {
		return 0
	}
	switch s[0] {
	case 'y', 'b', 'n', 'q', 'i', 'u', 'x', 't', 'd', 'h', 's', 'o', 'g', 'v':
		return 1
	case 'a':
		if arrays >= maxDepth {
			return 0
		}
		if len(s) > 1 && s[1] == '{' {
			if structs >= maxDepth || len(s) < 5 || !isBasic(s[2]) {
				return 0
			}
			n := completeType(s[3:], arrays+1, structs+1)
			if n == 0 || 3+n >= len(s) || s[3+n] != '}' {
				return 0
			}
			return 3 + n + 1
		}
		n := completeType(s[1:], arrays+1, structs)
		if n == 0 {
			return 0
		}
		return 1 + n
	case '(':
		if structs >= maxDepth {
			return 0
		}
		i := 1
		for i < len(s) && s[i] != ')' {
			n := completeType(s[i:], arrays, structs+1)
			if n == 0 {
				return 0
			}
			i += n
		}
		if i == 1 || i >= len(s) {
			return 0
		}
		return i + 1
	}
	return 0
}

func isBasic(c byte) bool {
	switch c {
	case 'y', 'b', 'n', 'q', 'i', 'u', 'x', 't', 'd', 'h', 's', 'o', 'g':
		return true
	}
	return false
}

// validString checks a D-Bus string's contents: UTF-8 without NUL.
func validString(b []byte) bool {
	for _, c := range b {
		if c == 0 || c >= 0x80 {
			return validUTF8NoNUL(b)
		}
	}
	return true
}

func validUTF8NoNUL(b []byte) bool {
	for _, c := range b {
		if c == 0 {
			return false
		}
	}
	return utf8.Valid(b)
}
