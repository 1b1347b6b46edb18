package dbuswire

import "encoding/binary"

// maxValueDepth bounds the nesting of containers in a value, variants
// included (the spec's 32 arrays + 32 structs).
const maxValueDepth = 64

// reader reads marshalled values from b; offsets are aligned relative to
// the start of b, which is the start of the message or of the body (both
// 8-aligned in the message).
type reader struct {
	b   []byte
	off int
	big bool
}

// align moves to the next multiple of n, checking the padding is zero.
func (r *reader) align(n int) error {
	o := (r.off + n - 1) &^ (n - 1)
	if o > len(r.b) {
		return invalid("value at offset %d: padding runs past the end", r.off)
	}
	for _, c := range r.b[r.off:o] {
		if c != 0 {
			return invalid("non-zero padding at offset %d", r.off)
		}
	}
	r.off = o
	return nil
}

// fixed aligns to n and returns the next n bytes.
func (r *reader) fixed(n int) ([]byte, error) {
	if err := r.align(n); err != nil {
		return nil, err
	}
	if r.off+n > len(r.b) {
		return nil, invalid("value of %d bytes at offset %d truncated", n, r.off)
	}
	r.off += n
	return r.b[r.off-n : r.off], nil
}

func (r *reader) u32() (uint32, error) {
	p, err := r.fixed(4)
	if err != nil {
		return 0, err
	}
	return u32(r.big, p), nil
}

func (r *reader) u64() (uint64, error) {
	p, err := r.fixed(8)
	if err != nil {
		return 0, err
	}
	if r.big {
		return binary.BigEndian.Uint64(p), nil
	}
	return binary.LittleEndian.Uint64(p), nil
}

func (r *reader) u16() (uint16, error) {
	p, err := r.fixed(2)
	if err != nil {
		return 0, err
	}
	if r.big {
		return binary.BigEndian.Uint16(p), nil
	}
	return binary.LittleEndian.Uint16(p), nil
}

// strBytes reads a STRING or OBJECT_PATH's bytes, checking the NUL
// terminator and that the contents are UTF-8 without NUL.
func (r *reader) strBytes() ([]byte, error) {
	n, err := r.u32()
	if err != nil {
		return nil, err
	}
	if uint64(r.off)+uint64(n)+1 > uint64(len(r.b)) {
		return nil, invalid("string of %d bytes at offset %d truncated", n, r.off)
	}
	s := r.b[r.off : r.off+int(n)]
	if r.b[r.off+int(n)] != 0 {
		return nil, invalid("string at offset %d not NUL-terminated", r.off)
	}
	if !validString(s) {
		return nil, invalid("string at offset %d is not UTF-8 without NUL", r.off)
	}
	r.off += int(n) + 1
	return s, nil
}

func (r *reader) str() (string, error) {
	s, err := r.strBytes()
	return string(s), err
}

// sig reads a SIGNATURE value and checks its syntax.
func (r *reader) sig() (string, error) {
	if r.off >= len(r.b) {
		return "", invalid("signature at offset %d truncated", r.off)
	}
	n := int(r.b[r.off])
	if r.off+1+n+1 > len(r.b) || r.b[r.off+1+n] != 0 {
		return "", invalid("signature at offset %d truncated or not NUL-terminated", r.off)
	}
	s := string(r.b[r.off+1 : r.off+1+n])
	if !ValidSignature(s) {
		return "", invalid("bad signature %q", s)
	}
	r.off += n + 2
	return s, nil
}

// fixedSize returns the size of a fixed-size basic type other than
// BOOLEAN (whose values need checking), or 0.
func fixedSize(c byte) int {
	switch c {
	case 'y':
		return 1
	case 'n', 'q':
		return 2
	case 'i', 'u', 'h':
		return 4
	case 'x', 't', 'd':
		return 8
	}
	return 0
}

// alignOf returns the alignment of the type whose code is c.
func alignOf(c byte) int {
	switch c {
	case 'y', 'g', 'v':
		return 1
	case 'n', 'q':
		return 2
	case 'x', 't', 'd', '(', '{':
		return 8
	}
	return 4
}

// skip checks and passes over one value of the single complete type at
// the start of sig (a valid signature), and returns the length of that
// type in sig. depth counts enclosing containers.
func (r *reader) skip(sig string, depth int) (int, error) {
	if depth > maxValueDepth {
		return 0, invalid("values nested more than %d deep", maxValueDepth)
	}
	c := sig[0]
	if n := fixedSize(c); n > 0 {
		_, err := r.fixed(n)
		return 1, err
	}
	switch c {
	case 'b':
		v, err := r.u32()
		if err == nil && v > 1 {
			err = invalid("boolean value %d", v)
		}
		return 1, err
	case 's':
		_, err := r.strBytes()
		return 1, err
	case 'o':
		s, err := r.strBytes()
		if err == nil && !ValidObjectPath(string(s)) {
			err = invalid("bad object path %q", s)
		}
		return 1, err
	case 'g':
		_, err := r.sig()
		return 1, err
	case 'v':
		s, err := r.sig()
		if err != nil {
			return 1, err
		}
		if !validSingle(s) {
			return 1, invalid("variant signature %q is not one complete type", s)
		}
		_, err = r.skip(s, depth+1)
		return 1, err
	case 'a':
		n, err := r.u32()
		if err != nil {
			return 0, err
		}
		if n > maxArray {
			return 0, invalid("array of %d bytes is over the 64 MiB limit", n)
		}
		elem := sig[1:]
		if err := r.align(alignOf(elem[0])); err != nil {
			return 0, err
		}
		end := uint64(r.off) + uint64(n)
		if end > uint64(len(r.b)) {
			return 0, invalid("array of %d bytes at offset %d truncated", n, r.off)
		}
		if size := fixedSize(elem[0]); size > 0 {
			if int(n)%size != 0 {
				return 0, invalid("array of %d bytes holds no whole number of %q", n, elem[0])
			}
			r.off = int(end)
			return 2, nil
		}
		l := completeType(sig, 0, 0)
		if n == 0 {
			return l, nil
		}
		for uint64(r.off) < end {
			if _, err := r.skip(elem, depth+1); err != nil {
				return 0, err
			}
		}
		if uint64(r.off) != end {
			return 0, invalid("array elements overrun the array's %d bytes", n)
		}
		return l, nil
	case '(', '{':
		if err := r.align(8); err != nil {
			return 0, err
		}
		i := 1
		for sig[i] != ')' && sig[i] != '}' {
			l, err := r.skip(sig[i:], depth+1)
			if err != nil {
				return 0, err
			}
			i += l
		}
		return i + 1, nil
	}
	return 0, invalid("type code %q", c)
}
