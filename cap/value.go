package cap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"reflect"
	"slices"
	"strings"
	"unicode/utf8"
)

// Value tags (docs/protocol-cap.md, "Arguments and results").
const (
	tagNil    = 0x00
	tagFalse  = 0x01
	tagTrue   = 0x02
	tagInt    = 0x03
	tagUint   = 0x04
	tagFloat  = 0x05
	tagString = 0x06
	tagBytes  = 0x07
	tagList   = 0x08
	tagRecord = 0x09
	tagRef    = 0x0a
	tagFile   = 0x0b
)

var (
	refType  = reflect.TypeFor[*Ref]()
	fileType = reflect.TypeFor[*os.File]()
)

// encoder turns a Go value into a body and the fds it carries. The fds
// are borrowed: the encoder keeps the *os.File of each Ref and file, in
// the order their indices give.
type encoder struct {
	buf   []byte
	files []*os.File
	plain []*os.File // the files that are not doors
}

// encodeValue encodes v (any Go value the mapping allows) as a body and
// the fds it carries, files, of which plain are the *os.File values (the
// others are the doors of Refs). Even on error, plain lists the files
// met so far.
func encodeValue(v any) (body []byte, files, plain []*os.File, err error) {
	var e encoder
	if err := e.value(reflect.ValueOf(v), 0); err != nil {
		return nil, nil, e.plain, err
	}
	return e.buf, e.files, e.plain, nil
}

func (e *encoder) uvarint(x uint64) { e.buf = binary.AppendUvarint(e.buf, x) }

func (e *encoder) value(v reflect.Value, depth int) error {
	if depth >= MaxDepth {
		return fmt.Errorf("value nested deeper than %d", MaxDepth)
	}
	if !v.IsValid() {
		e.buf = append(e.buf, tagNil)
		return nil
	}
	switch v.Type() {
	case refType:
		r := v.Interface().(*Ref)
		if r == nil {
			e.buf = append(e.buf, tagNil)
			return nil
		}
		f, err := r.door()
		if err != nil {
			return err
		}
		return e.fd(tagRef, f, r)
	case fileType:
		f := v.Interface().(*os.File)
		if f == nil {
			e.buf = append(e.buf, tagNil)
			return nil
		}
		return e.fd(tagFile, f, nil)
	}
	switch v.Kind() {
	case reflect.Bool:
		if v.Bool() {
			e.buf = append(e.buf, tagTrue)
		} else {
			e.buf = append(e.buf, tagFalse)
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		e.buf = append(e.buf, tagInt)
		x := v.Int()
		e.uvarint(uint64(x<<1) ^ uint64(x>>63))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		e.buf = append(e.buf, tagUint)
		e.uvarint(v.Uint())
	case reflect.Float32, reflect.Float64:
		e.buf = append(e.buf, tagFloat)
		e.buf = binary.LittleEndian.AppendUint64(e.buf, math.Float64bits(v.Float()))
	case reflect.String:
		s := v.String()
		if !utf8.ValidString(s) {
			return fmt.Errorf("string is not UTF-8")
		}
		e.buf = append(e.buf, tagString)
		e.uvarint(uint64(len(s)))
		e.buf = append(e.buf, s...)
	case reflect.Slice:
		if v.IsNil() {
			e.buf = append(e.buf, tagNil)
			return nil
		}
		if v.Type().Elem().Kind() == reflect.Uint8 {
			e.buf = append(e.buf, tagBytes)
			e.uvarint(uint64(v.Len()))
			e.buf = append(e.buf, v.Bytes()...)
			return nil
		}
		return e.list(v, depth)
	case reflect.Array:
		return e.list(v, depth)
	case reflect.Map:
		if v.Type().Key().Kind() != reflect.String {
			return fmt.Errorf("map key type %s: only string keys", v.Type().Key())
		}
		if v.IsNil() {
			e.buf = append(e.buf, tagNil)
			return nil
		}
		keys := v.MapKeys()
		slices.SortFunc(keys, func(a, b reflect.Value) int { return strings.Compare(a.String(), b.String()) })
		e.buf = append(e.buf, tagRecord)
		e.uvarint(uint64(len(keys)))
		for _, k := range keys {
			if err := e.key(k.String()); err != nil {
				return err
			}
			if err := e.value(v.MapIndex(k), depth+1); err != nil {
				return err
			}
		}
	case reflect.Struct:
		fields := fieldsOf(v.Type())
		e.buf = append(e.buf, tagRecord)
		e.uvarint(uint64(len(fields)))
		for _, f := range fields {
			if err := e.key(f.name); err != nil {
				return err
			}
			if err := e.value(v.Field(f.index), depth+1); err != nil {
				return err
			}
		}
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			e.buf = append(e.buf, tagNil)
			return nil
		}
		return e.value(v.Elem(), depth+1)
	default:
		return fmt.Errorf("cannot encode a %s", v.Type())
	}
	return nil
}

func (e *encoder) key(k string) error {
	if !utf8.ValidString(k) {
		return fmt.Errorf("key %q is not UTF-8", k)
	}
	e.uvarint(uint64(len(k)))
	e.buf = append(e.buf, k...)
	return nil
}

func (e *encoder) list(v reflect.Value, depth int) error {
	e.buf = append(e.buf, tagList)
	e.uvarint(uint64(v.Len()))
	for i := 0; i < v.Len(); i++ {
		if err := e.value(v.Index(i), depth+1); err != nil {
			return err
		}
	}
	return nil
}

func (e *encoder) fd(tag byte, f *os.File, r *Ref) error {
	if len(e.files) >= MaxFDs {
		return errTooManyFDs
	}
	e.buf = append(e.buf, tag)
	e.uvarint(uint64(len(e.files)))
	e.files = append(e.files, f)
	if r == nil {
		e.plain = append(e.plain, f)
	}
	return nil
}

// closePlain closes every *os.File in v (not the Refs' doors), as deep as
// a value may nest: what a method returned that will not be sent.
func closePlain(v reflect.Value, depth int) {
	if !v.IsValid() || depth > MaxDepth {
		return
	}
	if v.Type() == fileType {
		if f := v.Interface().(*os.File); f != nil {
			f.Close()
		}
		return
	}
	if v.Type() == refType {
		return
	}
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			closePlain(v.Elem(), depth+1)
		}
	case reflect.Slice, reflect.Array:
		if v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Uint8 {
			return
		}
		for i := 0; i < v.Len(); i++ {
			closePlain(v.Index(i), depth+1)
		}
	case reflect.Map:
		if v.Type().Key().Kind() == reflect.String {
			it := v.MapRange()
			for it.Next() {
				closePlain(it.Value(), depth+1)
			}
		}
	case reflect.Struct:
		for _, f := range fieldsOf(v.Type()) {
			closePlain(v.Field(f.index), depth+1)
		}
	}
}

// field is a struct field as a record key.
type field struct {
	name  string
	index int
}

// fieldsOf lists t's exported fields by key (the cap tag, else the
// name), in increasing byte order of the key. A tag of "-" leaves a
// field out.
func fieldsOf(t reflect.Type) []field {
	var fs []field
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		name := sf.Name
		if tag, ok := sf.Tag.Lookup("cap"); ok {
			if tag == "-" {
				continue
			}
			if tag != "" {
				name = tag
			}
		}
		fs = append(fs, field{name, i})
	}
	slices.SortFunc(fs, func(a, b field) int { return strings.Compare(a.name, b.name) })
	return fs
}

// Decoding happens in two passes over a body: check validates the whole
// value against the bounds and learns which fd is a ref and which a file;
// then decode fills a Go value, trusting the syntax check passed.

// errTooManyFDs: a value to encode holds more than MaxFDs fds.
var errTooManyFDs = fmt.Errorf("more than %d fds in one value", MaxFDs)

// errBadValue is the cause of every body that does not decode.
var errBadValue = errors.New("bad value")

func badValue(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errBadValue}, a...)...)
}

// reader walks a body.
type reader struct {
	b   []byte
	off int
}

func (r *reader) byte() (byte, error) {
	if r.off >= len(r.b) {
		return 0, badValue("truncated at byte %d", r.off)
	}
	c := r.b[r.off]
	r.off++
	return c, nil
}

// uvarint reads an unsigned LEB128 varint of at most 10 bytes, refusing
// overlong forms.
func (r *reader) uvarint() (uint64, error) {
	x, n := binary.Uvarint(r.b[r.off:])
	if n <= 0 {
		return 0, badValue("bad varint at byte %d", r.off)
	}
	if n > 1 && r.b[r.off+n-1] == 0 {
		return 0, badValue("overlong varint at byte %d", r.off)
	}
	r.off += n
	return x, nil
}

// length reads a count or length no larger than the bytes left.
func (r *reader) length() (int, error) {
	n, err := r.uvarint()
	if err != nil {
		return 0, err
	}
	if n > uint64(len(r.b)-r.off) {
		return 0, badValue("count %d larger than the %d bytes left", n, len(r.b)-r.off)
	}
	return int(n), nil
}

func (r *reader) text() (string, error) {
	n, err := r.length()
	if err != nil {
		return "", err
	}
	s := r.b[r.off : r.off+n]
	if !utf8.Valid(s) {
		return "", badValue("text at byte %d is not UTF-8", r.off)
	}
	r.off += n
	return string(s), nil
}

// fdKind says how a value uses each fd of its frame.
const (
	fdUnused = 0
	fdRef    = tagRef
	fdFile   = tagFile
)

// checkValue checks body as one value for a frame with nfds fds and
// returns how each fd is used. Every fd must be used exactly once.
func checkValue(body []byte, nfds int) ([]byte, error) {
	kinds := make([]byte, nfds)
	r := &reader{b: body}
	if err := r.check(kinds, 0); err != nil {
		return nil, err
	}
	if r.off != len(body) {
		return nil, badValue("%d bytes after the value", len(body)-r.off)
	}
	for i, k := range kinds {
		if k == fdUnused {
			return nil, badValue("fd %d of %d is not used", i, nfds)
		}
	}
	return kinds, nil
}

func (r *reader) check(kinds []byte, depth int) error {
	if depth >= MaxDepth {
		return badValue("nested deeper than %d", MaxDepth)
	}
	tag, err := r.byte()
	if err != nil {
		return err
	}
	switch tag {
	case tagNil, tagFalse, tagTrue:
	case tagInt, tagUint:
		_, err = r.uvarint()
	case tagFloat:
		if len(r.b)-r.off < 8 {
			return badValue("truncated float")
		}
		r.off += 8
	case tagString:
		_, err = r.text()
	case tagBytes:
		var n int
		if n, err = r.length(); err == nil {
			r.off += n
		}
	case tagList:
		var n int
		if n, err = r.length(); err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			if err := r.check(kinds, depth+1); err != nil {
				return err
			}
		}
	case tagRecord:
		var n int
		if n, err = r.length(); err != nil {
			return err
		}
		var prev string
		for i := 0; i < n; i++ {
			k, err := r.text()
			if err != nil {
				return err
			}
			if i > 0 && k <= prev {
				return badValue("record key %q after %q: keys must increase", k, prev)
			}
			prev = k
			if err := r.check(kinds, depth+1); err != nil {
				return err
			}
		}
	case tagRef, tagFile:
		x, err := r.uvarint()
		if err != nil {
			return err
		}
		if x >= uint64(len(kinds)) {
			return badValue("fd index %d, frame has %d fds", x, len(kinds))
		}
		if kinds[x] != fdUnused {
			return badValue("fd index %d used twice", x)
		}
		kinds[x] = tag
	default:
		return badValue("unknown tag %#x at byte %d", tag, r.off-1)
	}
	return err
}

// fdSet holds the fds of a received frame while a value is decoded from
// it, each as the *Ref (adopted at once, so that a door received again
// costs no fd while it waits) or the *os.File the value will hold:
// decoding takes each once; whatever is not taken when the decoding ends
// (or everything, when it fails) is closed.
type fdSet struct {
	items []any // *Ref or *os.File; nil once taken
	taken []any // given to the value, to close on failure
}

func closeItem(x any) {
	switch x := x.(type) {
	case *Ref:
		x.Close()
	case *os.File:
		x.Close()
	}
}

func (s *fdSet) take(i int) any {
	x := s.items[i]
	s.items[i] = nil
	s.taken = append(s.taken, x)
	return x
}

// finish closes every fd not taken; with failed, the taken ones too.
func (s *fdSet) finish(failed bool) {
	for i, x := range s.items {
		if x != nil {
			closeItem(x)
			s.items[i] = nil
		}
	}
	if failed {
		for _, x := range s.taken {
			closeItem(x)
		}
	}
	s.taken = nil
}

// received is a frame's value, checked, with its doors adopted, waiting
// to be decoded: by decode once, or dropped by close.
type received struct {
	body  []byte
	kinds []byte
	set   *fdSet
	err   error // why the value is bad; its fds are closed then
}

// receive checks body as the value of a frame whose fds are files (which
// it takes) and adopts the doors among them.
func receive(body []byte, files []*os.File) *received {
	rv := &received{body: body, set: &fdSet{items: make([]any, len(files))}}
	for i, f := range files {
		rv.set.items[i] = f
	}
	rv.kinds, rv.err = checkValue(body, len(files))
	if rv.err != nil {
		rv.set.finish(true)
		return rv
	}
	for i, k := range rv.kinds {
		if k != fdRef {
			continue
		}
		r, err := adoptDoor(files[i])
		if err != nil {
			rv.set.items[i] = nil // adoptDoor closed it
			rv.set.finish(true)
			rv.err = fmt.Errorf("fd %d: %w", i, err)
			return rv
		}
		rv.set.items[i] = r
	}
	return rv
}

// close drops the value, closing its fds.
func (rv *received) close() {
	if rv.err == nil {
		rv.set.finish(true)
	}
}

// decode decodes the value into *out (out a non-nil pointer, or nil to
// drop the value). Every fd is the caller's as a Ref or *os.File inside
// the value, or closed.
func (rv *received) decode(out any) error {
	if rv.err != nil {
		return rv.err
	}
	set := rv.set
	if out == nil {
		set.finish(true)
		return nil
	}
	pv := reflect.ValueOf(out)
	if pv.Kind() != reflect.Pointer || pv.IsNil() {
		set.finish(true)
		return fmt.Errorf("decode into %T: want a non-nil pointer", out)
	}
	d := &decoder{reader: reader{b: rv.body}, kinds: rv.kinds, set: set}
	if err := d.decode(pv.Elem()); err != nil {
		set.finish(true)
		return err
	}
	set.finish(false)
	return nil
}

// decodeValue is receive and decode in one.
func decodeValue(body []byte, files []*os.File, out any) error {
	return receive(body, files).decode(out)
}

type decoder struct {
	reader
	kinds []byte
	set   *fdSet
}

func (d *decoder) mismatch(tag byte, t reflect.Type) error {
	return badValue("a %s does not decode into %s", tagName(tag), t)
}

func tagName(tag byte) string {
	names := [...]string{"nil", "false", "true", "int", "uint", "float", "string", "bytes", "list", "record", "ref", "file"}
	if int(tag) < len(names) {
		return names[tag]
	}
	return fmt.Sprintf("tag %#x", tag)
}

// decode reads one value into v (settable).
func (d *decoder) decode(v reflect.Value) error {
	tag, _ := d.byte()
	t := v.Type()
	if t.Kind() == reflect.Interface {
		if t.NumMethod() != 0 {
			return d.mismatch(tag, t)
		}
		x, err := d.generic(tag)
		if err != nil {
			return err
		}
		if x == nil {
			v.SetZero()
		} else {
			v.Set(reflect.ValueOf(x))
		}
		return nil
	}
	if tag == tagNil {
		switch t.Kind() {
		case reflect.Pointer, reflect.Slice, reflect.Map:
			v.SetZero()
			return nil
		}
		return d.mismatch(tag, t)
	}
	switch tag {
	case tagRef, tagFile:
		if (tag == tagRef && t != refType) || (tag == tagFile && t != fileType) {
			if t.Kind() == reflect.Pointer && t != refType && t != fileType {
				break // a pointer to a pointer: allocate below
			}
			return d.mismatch(tag, t)
		}
		i, _ := d.uvarint()
		v.Set(reflect.ValueOf(d.set.take(int(i))))
		return nil
	}
	if t.Kind() == reflect.Pointer {
		if t == refType || t == fileType {
			return d.mismatch(tag, t)
		}
		d.off-- // the element decodes the tag again
		p := reflect.New(t.Elem())
		if err := d.decode(p.Elem()); err != nil {
			return err
		}
		v.Set(p)
		return nil
	}
	switch tag {
	case tagFalse, tagTrue:
		if t.Kind() != reflect.Bool {
			return d.mismatch(tag, t)
		}
		v.SetBool(tag == tagTrue)
	case tagInt, tagUint:
		u, _ := d.uvarint()
		neg := false
		if tag == tagInt {
			i := int64(u>>1) ^ -int64(u&1)
			neg = i < 0
			u = uint64(i)
		}
		switch t.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			i := int64(u)
			if (!neg && u > math.MaxInt64) || v.OverflowInt(i) {
				return badValue("%s out of range of %s", tagName(tag), t)
			}
			v.SetInt(i)
		case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
			if neg || v.OverflowUint(u) {
				return badValue("%s out of range of %s", tagName(tag), t)
			}
			v.SetUint(u)
		case reflect.Float32, reflect.Float64:
			if neg {
				v.SetFloat(float64(int64(u)))
			} else {
				v.SetFloat(float64(u))
			}
		default:
			return d.mismatch(tag, t)
		}
	case tagFloat:
		if t.Kind() != reflect.Float64 && t.Kind() != reflect.Float32 {
			return d.mismatch(tag, t)
		}
		v.SetFloat(math.Float64frombits(binary.LittleEndian.Uint64(d.b[d.off:])))
		d.off += 8
	case tagString:
		if t.Kind() != reflect.String {
			return d.mismatch(tag, t)
		}
		s, _ := d.text()
		v.SetString(s)
	case tagBytes:
		n, _ := d.length()
		b := d.b[d.off : d.off+n]
		d.off += n
		switch {
		case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Uint8:
			v.SetBytes(bytes.Clone(b))
			if v.IsNil() {
				v.SetBytes([]byte{})
			}
		case t.Kind() == reflect.String:
			if !utf8.Valid(b) {
				return badValue("bytes into string: not UTF-8")
			}
			v.SetString(string(b))
		default:
			return d.mismatch(tag, t)
		}
	case tagList:
		n, _ := d.length()
		switch t.Kind() {
		case reflect.Slice:
			s := reflect.MakeSlice(t, n, n)
			for i := 0; i < n; i++ {
				if err := d.decode(s.Index(i)); err != nil {
					return err
				}
			}
			v.Set(s)
		case reflect.Array:
			if n != t.Len() {
				return badValue("a list of %d into %s", n, t)
			}
			for i := 0; i < n; i++ {
				if err := d.decode(v.Index(i)); err != nil {
					return err
				}
			}
		default:
			return d.mismatch(tag, t)
		}
	case tagRecord:
		n, _ := d.length()
		switch t.Kind() {
		case reflect.Map:
			if t.Key().Kind() != reflect.String {
				return d.mismatch(tag, t)
			}
			m := reflect.MakeMapWithSize(t, min(n, 64))
			for i := 0; i < n; i++ {
				k, _ := d.text()
				e := reflect.New(t.Elem()).Elem()
				if err := d.decode(e); err != nil {
					return err
				}
				m.SetMapIndex(reflect.ValueOf(k).Convert(t.Key()), e)
			}
			v.Set(m)
		case reflect.Struct:
			fields := fieldsOf(t)
			v.SetZero()
			for i := 0; i < n; i++ {
				k, _ := d.text()
				j, found := slices.BinarySearchFunc(fields, k, func(f field, k string) int { return strings.Compare(f.name, k) })
				if !found {
					// An unknown key: skip its value; its fds stay
					// untaken and are closed at the end.
					if _, err := d.generic0(); err != nil {
						return err
					}
					continue
				}
				if err := d.decode(v.Field(fields[j].index)); err != nil {
					return fmt.Errorf("%s: %w", k, err)
				}
			}
		default:
			return d.mismatch(tag, t)
		}
	default:
		return d.mismatch(tag, t)
	}
	return nil
}

// generic0 skips one value (its tag not yet read) without taking its fds.
func (d *decoder) generic0() (any, error) {
	if err := d.reader.check(make([]byte, len(d.kinds)), 0); err != nil {
		return nil, err
	}
	return nil, nil
}

// generic decodes a value whose tag was read into the Go value an any
// holds: nil, bool, int64, uint64, float64, string, []byte, []any,
// map[string]any, *Ref, *os.File.
func (d *decoder) generic(tag byte) (any, error) {
	switch tag {
	case tagNil:
		return nil, nil
	case tagFalse:
		return false, nil
	case tagTrue:
		return true, nil
	case tagInt:
		u, _ := d.uvarint()
		return int64(u>>1) ^ -int64(u&1), nil
	case tagUint:
		u, _ := d.uvarint()
		return u, nil
	case tagFloat:
		f := math.Float64frombits(binary.LittleEndian.Uint64(d.b[d.off:]))
		d.off += 8
		return f, nil
	case tagString:
		return d.text()
	case tagBytes:
		n, _ := d.length()
		b := bytes.Clone(d.b[d.off : d.off+n])
		if b == nil {
			b = []byte{}
		}
		d.off += n
		return b, nil
	case tagList:
		n, _ := d.length()
		l := make([]any, n)
		for i := range l {
			t, _ := d.byte()
			x, err := d.generic(t)
			if err != nil {
				return nil, err
			}
			l[i] = x
		}
		return l, nil
	case tagRecord:
		n, _ := d.length()
		m := make(map[string]any, min(n, 64))
		for i := 0; i < n; i++ {
			k, _ := d.text()
			t, _ := d.byte()
			x, err := d.generic(t)
			if err != nil {
				return nil, err
			}
			m[k] = x
		}
		return m, nil
	case tagRef, tagFile:
		i, _ := d.uvarint()
		return d.set.take(int(i)), nil
	}
	return nil, badValue("unknown tag %#x", tag)
}
