package dbuswire

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Encoder marshals a message body, aligning each value relative to the
// start of Buf (a body starts 8-aligned in its message). The caller writes
// values in the order of the signature it puts in the header; Encoder does
// not check them against it.
type Encoder struct {
	Order byte   // 'l' or 'B'
	Buf   []byte // the body so far

	bo binary.AppendByteOrder
}

// NewEncoder returns an encoder for a body in byte order order ('B'
// big-endian, anything else little-endian).
func NewEncoder(order byte) *Encoder {
	e := &Encoder{Order: 'l', bo: binary.LittleEndian}
	if order == 'B' {
		e.Order, e.bo = 'B', binary.BigEndian
	}
	return e
}

func (e *Encoder) align(n int) {
	for len(e.Buf)%n != 0 {
		e.Buf = append(e.Buf, 0)
	}
}

// Bytes returns the marshalled body.
func (e *Encoder) Bytes() []byte { return e.Buf }

// Byte appends a BYTE (y).
func (e *Encoder) Byte(v byte) { e.Buf = append(e.Buf, v) }

// Bool appends a BOOLEAN (b).
func (e *Encoder) Bool(v bool) {
	var u uint32
	if v {
		u = 1
	}
	e.Uint32(u)
}

// Int16 appends an INT16 (n).
func (e *Encoder) Int16(v int16) { e.Uint16(uint16(v)) }

// Uint16 appends a UINT16 (q).
func (e *Encoder) Uint16(v uint16) { e.align(2); e.Buf = e.bo.AppendUint16(e.Buf, v) }

// Int32 appends an INT32 (i).
func (e *Encoder) Int32(v int32) { e.Uint32(uint32(v)) }

// Uint32 appends a UINT32 (u).
func (e *Encoder) Uint32(v uint32) { e.align(4); e.Buf = e.bo.AppendUint32(e.Buf, v) }

// Int64 appends an INT64 (x).
func (e *Encoder) Int64(v int64) { e.Uint64(uint64(v)) }

// Uint64 appends a UINT64 (t).
func (e *Encoder) Uint64(v uint64) { e.align(8); e.Buf = e.bo.AppendUint64(e.Buf, v) }

// Double appends a DOUBLE (d).
func (e *Encoder) Double(v float64) { e.Uint64(math.Float64bits(v)) }

// UnixFD appends a UNIX_FD (h): the index of the fd among the message's.
func (e *Encoder) UnixFD(index uint32) { e.Uint32(index) }

// String appends a STRING (s). The caller passes UTF-8 without NUL.
func (e *Encoder) String(s string) {
	e.Uint32(uint32(len(s)))
	e.Buf = append(e.Buf, s...)
	e.Buf = append(e.Buf, 0)
}

// ObjectPath appends an OBJECT_PATH (o).
func (e *Encoder) ObjectPath(s string) { e.String(s) }

// Signature appends a SIGNATURE (g) of at most 255 bytes.
func (e *Encoder) Signature(s string) {
	e.Buf = append(e.Buf, byte(len(s)))
	e.Buf = append(e.Buf, s...)
	e.Buf = append(e.Buf, 0)
}

// ByteArray appends an array of bytes (ay).
func (e *Encoder) ByteArray(b []byte) {
	e.Uint32(uint32(len(b)))
	e.Buf = append(e.Buf, b...)
}

// Strings appends an array of strings (as).
func (e *Encoder) Strings(ss []string) {
	e.Array("s", func() {
		for _, s := range ss {
			e.String(s)
		}
	})
}

// Array appends an ARRAY whose elements are of type elemSig; elems
// appends them.
func (e *Encoder) Array(elemSig string, elems func()) {
	e.align(4)
	at := len(e.Buf)
	e.Buf = append(e.Buf, 0, 0, 0, 0)
	if elemSig != "" {
		e.align(alignOf(elemSig[0]))
	}
	start := len(e.Buf)
	elems()
	n := uint32(len(e.Buf) - start)
	if e.Order == 'B' {
		binary.BigEndian.PutUint32(e.Buf[at:], n)
	} else {
		binary.LittleEndian.PutUint32(e.Buf[at:], n)
	}
}

// Struct appends a STRUCT; fields appends its fields.
func (e *Encoder) Struct(fields func()) { e.align(8); fields() }

// DictEntry appends a DICT_ENTRY, an element of an array of type a{..};
// kv appends the key and the value.
func (e *Encoder) DictEntry(kv func()) { e.align(8); kv() }

// Variant appends a VARIANT of type sig (one complete type); value
// appends the value.
func (e *Encoder) Variant(sig string, value func()) { e.Signature(sig); value() }

// Decoder reads a body's values in the order of its signature. Every
// method checks the next type in the signature and returns an error at
// the first mismatch or malformed value; after an error every method
// returns that error.
type Decoder struct {
	r   reader
	sig string // the signature being read: the body's, an element's or a variant's
	pos int
	err error
}

// NewDecoder returns a decoder for body, in byte order order ('l' or
// 'B'), of signature sig.
func NewDecoder(order byte, sig string, body []byte) *Decoder {
	d := &Decoder{r: reader{b: body, big: order == 'B'}, sig: sig}
	if !ValidSignature(sig) {
		d.err = invalid("bad body signature %q", sig)
	}
	return d
}

// Err returns the first error met, if any.
func (d *Decoder) Err() error { return d.err }

// Done returns the first error, or an error if the signature or the body
// has more than was read.
func (d *Decoder) Done() error {
	if d.err == nil && d.pos != len(d.sig) {
		d.err = invalid("body values %q left unread", d.sig[d.pos:])
	}
	if d.err == nil && d.r.off != len(d.r.b) {
		d.err = invalid("%d bytes after the body's values", len(d.r.b)-d.r.off)
	}
	return d.err
}

// next checks that the next type is the basic type c and moves past it.
func (d *Decoder) next(c byte) bool {
	if d.err != nil {
		return false
	}
	if d.pos >= len(d.sig) {
		d.err = invalid("no more values in signature %q; want %q", d.sig, c)
		return false
	}
	if d.sig[d.pos] != c {
		d.err = invalid("value of type %q in signature %q; want %q", d.sig[d.pos], d.sig, c)
		return false
	}
	d.pos++
	return true
}

func (d *Decoder) fail(err error) { d.err = err }

func (d *Decoder) u32(c byte) (uint32, error) {
	if !d.next(c) {
		return 0, d.err
	}
	v, err := d.r.u32()
	if err != nil {
		d.fail(err)
	}
	return v, d.err
}

func (d *Decoder) u64(c byte) (uint64, error) {
	if !d.next(c) {
		return 0, d.err
	}
	v, err := d.r.u64()
	if err != nil {
		d.fail(err)
	}
	return v, d.err
}

func (d *Decoder) u16(c byte) (uint16, error) {
	if !d.next(c) {
		return 0, d.err
	}
	v, err := d.r.u16()
	if err != nil {
		d.fail(err)
	}
	return v, d.err
}

// Byte reads a BYTE (y).
func (d *Decoder) Byte() (byte, error) {
	if !d.next('y') {
		return 0, d.err
	}
	p, err := d.r.fixed(1)
	if err != nil {
		d.fail(err)
		return 0, err
	}
	return p[0], nil
}

// Bool reads a BOOLEAN (b), which must be 0 or 1.
func (d *Decoder) Bool() (bool, error) {
	v, err := d.u32('b')
	if err == nil && v > 1 {
		d.fail(invalid("boolean value %d", v))
	}
	return v == 1, d.err
}

// Int16 reads an INT16 (n).
func (d *Decoder) Int16() (int16, error) { v, err := d.u16('n'); return int16(v), err }

// Uint16 reads a UINT16 (q).
func (d *Decoder) Uint16() (uint16, error) { return d.u16('q') }

// Int32 reads an INT32 (i).
func (d *Decoder) Int32() (int32, error) { v, err := d.u32('i'); return int32(v), err }

// Uint32 reads a UINT32 (u).
func (d *Decoder) Uint32() (uint32, error) { return d.u32('u') }

// Int64 reads an INT64 (x).
func (d *Decoder) Int64() (int64, error) { v, err := d.u64('x'); return int64(v), err }

// Uint64 reads a UINT64 (t).
func (d *Decoder) Uint64() (uint64, error) { return d.u64('t') }

// Double reads a DOUBLE (d).
func (d *Decoder) Double() (float64, error) {
	v, err := d.u64('d')
	return math.Float64frombits(v), err
}

// UnixFD reads a UNIX_FD (h): an index among the message's fds.
func (d *Decoder) UnixFD() (uint32, error) { return d.u32('h') }

func (d *Decoder) str(c byte) (string, error) {
	if !d.next(c) {
		return "", d.err
	}
	s, err := d.r.str()
	if err != nil {
		d.fail(err)
	} else if c == 'o' && !ValidObjectPath(s) {
		d.fail(invalid("bad object path %q", s))
	}
	return s, d.err
}

// String reads a STRING (s).
func (d *Decoder) String() (string, error) { return d.str('s') }

// ObjectPath reads an OBJECT_PATH (o).
func (d *Decoder) ObjectPath() (string, error) { return d.str('o') }

// Signature reads a SIGNATURE (g).
func (d *Decoder) Signature() (string, error) {
	if !d.next('g') {
		return "", d.err
	}
	s, err := d.r.sig()
	if err != nil {
		d.fail(err)
	}
	return s, d.err
}

// container moves into the container whose opening code is open, with
// signature inner, runs f, and checks f read all of inner.
func (d *Decoder) enter(inner string, f func() error) {
	sig, pos := d.sig, d.pos
	d.sig, d.pos = inner, 0
	if err := f(); err != nil && d.err == nil {
		d.err = err
	}
	if d.err == nil && d.pos != len(inner) {
		d.err = invalid("values %q of a container left unread", inner[d.pos:])
	}
	d.sig, d.pos = sig, pos
}

// Array reads an ARRAY, calling elem once per element to read it.
func (d *Decoder) Array(elem func() error) error {
	if d.err != nil {
		return d.err
	}
	if d.pos >= len(d.sig) || d.sig[d.pos] != 'a' {
		return d.mismatch("an array")
	}
	l := completeType(d.sig[d.pos:], 0, 0)
	inner := d.sig[d.pos+1 : d.pos+l]
	d.pos += l
	n, err := d.r.u32()
	if err == nil && n > maxArray {
		err = invalid("array of %d bytes is over the 64 MiB limit", n)
	}
	if err == nil {
		err = d.r.align(alignOf(inner[0]))
	}
	if err != nil {
		d.fail(err)
		return err
	}
	end := uint64(d.r.off) + uint64(n)
	if end > uint64(len(d.r.b)) {
		d.fail(invalid("array of %d bytes at offset %d truncated", n, d.r.off))
		return d.err
	}
	for d.err == nil && uint64(d.r.off) < end {
		at := d.r.off
		d.enter(inner, elem)
		if d.err == nil && d.r.off == at {
			d.err = invalid("array element read nothing")
		}
	}
	if d.err == nil && uint64(d.r.off) != end {
		d.err = invalid("array elements overrun the array's %d bytes", n)
	}
	return d.err
}

// Struct reads a STRUCT, calling fields to read its fields.
func (d *Decoder) Struct(fields func() error) error { return d.group('(', ')', "a struct", fields) }

// DictEntry reads a DICT_ENTRY (an array element of type {..}), calling
// kv to read the key and the value.
func (d *Decoder) DictEntry(kv func() error) error { return d.group('{', '}', "a dict entry", kv) }

func (d *Decoder) group(open, close byte, what string, f func() error) error {
	if d.err != nil {
		return d.err
	}
	if d.pos >= len(d.sig) || d.sig[d.pos] != open {
		return d.mismatch(what)
	}
	l := completeType(d.sig[d.pos:], 0, 0)
	if open == '{' {
		// A dict entry's signature is only valid inside an array's, so
		// completeType does not measure it: find its end by hand.
		l = 1 + completeType(d.sig[d.pos+1:], 0, 0)
		l += completeType(d.sig[d.pos+l:], 0, 0) + 1
	}
	inner := d.sig[d.pos+1 : d.pos+l-1]
	d.pos += l
	if err := d.r.align(8); err != nil {
		d.fail(err)
		return err
	}
	d.enter(inner, f)
	return d.err
}

// Variant reads a VARIANT: value is called with its signature and reads
// the one value (or skips it with Skip).
func (d *Decoder) Variant(value func(sig string) error) error {
	if !d.next('v') {
		return d.err
	}
	s, err := d.r.sig()
	if err == nil && !validSingle(s) {
		err = invalid("variant signature %q is not one complete type", s)
	}
	if err != nil {
		d.fail(err)
		return err
	}
	d.enter(s, func() error { return value(s) })
	return d.err
}

// Skip checks and passes over the next value, whatever its type.
func (d *Decoder) Skip() error {
	if d.err != nil {
		return d.err
	}
	if d.pos >= len(d.sig) {
		return d.mismatch("a value")
	}
	l, err := d.r.skip(d.sig[d.pos:], 0)
	if err != nil {
		d.fail(err)
		return err
	}
	d.pos += l
	return nil
}

// ByteArray reads an array of bytes (ay), copied.
func (d *Decoder) ByteArray() ([]byte, error) {
	if d.err != nil {
		return nil, d.err
	}
	if d.pos+1 >= len(d.sig) || d.sig[d.pos] != 'a' || d.sig[d.pos+1] != 'y' {
		return nil, d.mismatch("ay")
	}
	d.pos += 2
	n, err := d.r.u32()
	if err == nil && (n > maxArray || uint64(d.r.off)+uint64(n) > uint64(len(d.r.b))) {
		err = invalid("byte array of %d bytes truncated or over the limit", n)
	}
	if err != nil {
		d.fail(err)
		return nil, err
	}
	b := append([]byte(nil), d.r.b[d.r.off:d.r.off+int(n)]...)
	d.r.off += int(n)
	return b, nil
}

// Strings reads an array of strings (as).
func (d *Decoder) Strings() ([]string, error) {
	var ss []string
	err := d.Array(func() error {
		s, err := d.String()
		ss = append(ss, s)
		return err
	})
	return ss, err
}

func (d *Decoder) mismatch(want string) error {
	if d.pos >= len(d.sig) {
		d.err = invalid("no more values in signature %q; want %s", d.sig, want)
	} else {
		d.err = invalid("value of type %q in signature %q; want %s", d.sig[d.pos], d.sig, want)
	}
	return d.err
}

// Arg is a string-like argument of a body, for match rules and porter's
// native ARGS field.
type Arg struct {
	Index int
	Kind  byte // 's' or 'o'
	Value string
}

// StringArgs returns the top-level 's' and 'o' arguments among the first
// max arguments of body (any signature; other types are skipped and
// checked, arrays and variants included), with their indexes.
func StringArgs(order byte, sig string, body []byte, max int) ([]Arg, error) {
	if !ValidSignature(sig) {
		return nil, invalid("bad body signature %q", sig)
	}
	r := reader{b: body, big: order == 'B'}
	var args []Arg
	for i, pos := 0, 0; i < max && pos < len(sig); i++ {
		c := sig[pos]
		if c != 's' && c != 'o' {
			l, err := r.skip(sig[pos:], 0)
			if err != nil {
				return args, fmt.Errorf("argument %d: %w", i, err)
			}
			pos += l
			continue
		}
		s, err := r.str()
		if err == nil && c == 'o' && !ValidObjectPath(s) {
			err = invalid("bad object path %q", s)
		}
		if err != nil {
			return args, fmt.Errorf("argument %d: %w", i, err)
		}
		args = append(args, Arg{Index: i, Kind: c, Value: s})
		pos++
	}
	return args, nil
}
