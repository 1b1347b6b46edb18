package cap

import (
	"bytes"
	"os"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzDecodeFrame: parseFrame never panics, and a frame it accepts is
// canonical: encoding what it parsed gives the same bytes.
func FuzzDecodeFrame(f *testing.F) {
	f.Add(appendFrame(nil, header{typ: tOpen, nfds: 1}, "", nil))
	f.Add(appendFrame(nil, header{typ: tCall, id: 1}, "Add", []byte{0x09, 0x01, 0x01, 'n', 0x03, 0x02}))
	f.Add(appendFrame(nil, header{typ: tError, id: 7, code: 3}, "", []byte("boom")))
	f.Add(appendFrame(nil, header{typ: tFDS, nfds: 253}, "", nil))
	f.Fuzz(func(t *testing.T, p []byte) {
		h, name, body, err := parseFrame(p)
		if err != nil {
			return
		}
		if q := appendFrame(nil, h, string(name), body); !bytes.Equal(p, q) {
			t.Fatalf("parsed %+v from %x, encodes as %x", h, p, q)
		}
	})
}

// fuzzTarget is a typed value for FuzzDecodeValue to decode into.
type fuzzTarget struct {
	A int8
	B []uint16
	C map[string]*float32
	D *Ref
	E *os.File
	F [2]bool
	G string `cap:"g"`
	H []byte
	I any
}

// FuzzDecodeValue: decoding any body with 0–2 fds never panics, never
// leaks an fd, and a value decoded into an any (without fds) encodes back
// to the same bytes: the encoding has one form per value.
func FuzzDecodeValue(f *testing.F) {
	for _, v := range []any{
		nil, true, int64(-3), uint64(1 << 63), 1.5, "text", []byte{1, 2},
		[]any{int64(1), "x", nil}, map[string]any{"a": int64(1), "b": []any{}},
		fuzzTarget{A: -1, B: []uint16{7}, G: "g", F: [2]bool{true, false}},
	} {
		body, _, _, err := encodeValue(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(body, uint8(0))
	}
	f.Add([]byte{tagList, 2, tagRef, 0, tagFile, 1}, uint8(2))
	f.Add([]byte{tagRecord, 2, 1, 'D', tagRef, 0, 1, 'E', tagFile, 1}, uint8(2))
	f.Fuzz(func(t *testing.T, body []byte, n uint8) {
		n %= 3
		files := func() []*os.File {
			var fs []*os.File
			for i := 0; i < int(n); i++ {
				fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				unix.Close(fds[1])
				fs = append(fs, os.NewFile(uintptr(fds[0]), "fuzz"))
			}
			return fs
		}
		var v any
		if err := decodeValue(body, files(), &v); err == nil {
			if n == 0 {
				again, _, _, err := encodeValue(v)
				if err != nil || !bytes.Equal(again, body) {
					t.Fatalf("decoded %#v from %x, encodes as %x (%v)", v, body, again, err)
				}
			}
			closeAll(reflect.ValueOf(v))
		}
		var ft fuzzTarget
		if err := decodeValue(body, files(), &ft); err == nil {
			closeAll(reflect.ValueOf(ft))
		}
		doors.Lock()
		left := len(doors.m)
		doors.Unlock()
		if left != 0 {
			t.Fatalf("%d doors left open", left)
		}
	})
}

// closeAll closes every Ref and file inside v.
func closeAll(v reflect.Value) {
	if !v.IsValid() {
		return
	}
	switch v.Type() {
	case refType:
		v.Interface().(*Ref).Close()
		return
	case fileType:
		if f := v.Interface().(*os.File); f != nil {
			f.Close()
		}
		return
	}
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			closeAll(v.Elem())
		}
	case reflect.Slice, reflect.Array:
		for i := 0; i < v.Len(); i++ {
			closeAll(v.Index(i))
		}
	case reflect.Map:
		for _, k := range v.MapKeys() {
			closeAll(v.MapIndex(k))
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			closeAll(v.Field(i))
		}
	}
}
