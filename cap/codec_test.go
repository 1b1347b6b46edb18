package cap

import (
	"bytes"
	"errors"
	"math"
	"os"
	"strings"
	"testing"

	"github.com/porter-ipc/porter/internal/testutil"
)

func TestFrameRules(t *testing.T) {
	testutil.CheckLeaks(t)
	ok := func(h header, name string, body []byte) []byte { return appendFrame(nil, h, name, body) }
	good := []struct {
		name string
		p    []byte
	}{
		{"open", ok(header{typ: tOpen, nfds: 1}, "", nil)},
		{"opened", ok(header{typ: tOpened}, "", make([]byte, 8))},
		{"call", ok(header{typ: tCall, id: 1, nfds: 3}, "Add_2", []byte{0})},
		{"reply", ok(header{typ: tReply, id: 9, nfds: 1024}, "", []byte{0})},
		{"error", ok(header{typ: tError, id: 9, code: 3}, "", []byte("x"))},
		{"cancel", ok(header{typ: tCancel, id: 2}, "", nil)},
		{"revoked", ok(header{typ: tRevoked}, "", nil)},
		{"fds", ok(header{typ: tFDS, nfds: 253}, "", nil)},
		{"close", ok(header{typ: tClose}, "", nil)},
	}
	for _, c := range good {
		if _, _, _, err := parseFrame(c.p); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	set := func(p []byte, off int, v ...byte) []byte {
		q := bytes.Clone(p)
		copy(q[off:], v)
		return q
	}
	call := ok(header{typ: tCall, id: 1}, "Add", []byte{0})
	bad := []struct {
		name, want string
		p          []byte
	}{
		{"short", "shorter than the header", call[:23]},
		{"version", "version 2", set(call, 0, 2)},
		{"type 0", "unknown type 0", set(call, 1, 0)},
		{"type 10", "unknown type 10", set(call, 1, 10)},
		{"flags", "flags", set(call, 2, 1)},
		{"length", "header says", append(bytes.Clone(call), 0)},
		{"too many fds", "1025 fds", set(call, 4, 0x01, 0x04)},
		{"call id 0", "id 0", set(call, 8, 0)},
		{"call name", "bad method name", set(call, 24, '1')},
		{"call code", "code", set(call, 20, 1)},
		{"open fds", "OPEN with 2 fds", ok(header{typ: tOpen, nfds: 2}, "", nil)},
		{"open id", "id", ok(header{typ: tOpen, nfds: 1, id: 1}, "", nil)},
		{"opened body", "OPENED with a 4-byte body", ok(header{typ: tOpened}, "", make([]byte, 4))},
		{"error code 0", "code 0", ok(header{typ: tError, id: 1}, "", nil)},
		{"error fds", "with 1 fds", ok(header{typ: tError, id: 1, code: 1, nfds: 1}, "", nil)},
		{"cancel body", "with a body", ok(header{typ: tCancel, id: 1}, "", []byte{1})},
		{"reply name", "with a name", ok(header{typ: tReply, id: 1}, "x", nil)},
		{"fds 0", "FDS with 0 fds", ok(header{typ: tFDS}, "", nil)},
		{"fds 254", "FDS with 254 fds", ok(header{typ: tFDS, nfds: 254}, "", nil)},
		{"revoked id", "id 5", ok(header{typ: tRevoked, id: 5}, "", nil)},
	}
	for _, c := range bad {
		_, _, _, err := parseFrame(c.p)
		if !errors.Is(err, errMalformed) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want malformed: %s", c.name, err, c.want)
		}
	}
	if validName("") || validName(strings.Repeat("a", 256)) || !validName(strings.Repeat("a", 255)) || validName("a-b") || validName("9a") {
		t.Error("validName")
	}
}

type inner struct {
	X []int8
	Y map[string]uint16
}

type outer struct {
	B    bool
	I    int
	U    uint32
	F    float64
	S    string `cap:"s"`
	Raw  []byte
	P    *inner
	In   inner
	A    [2]string
	Skip int `cap:"-"`
	priv int
}

func TestValueRoundTrip(t *testing.T) {
	testutil.CheckLeaks(t)
	in := outer{B: true, I: -5, U: 7, F: math.Pi, S: "héllo", Raw: []byte{0, 1}, P: &inner{X: []int8{-128, 127}}, In: inner{Y: map[string]uint16{"b": 2, "a": 1}}, A: [2]string{"x", ""}, Skip: 9, priv: 3}
	body, files, _, err := encodeValue(in)
	if err != nil || len(files) != 0 {
		t.Fatal(err)
	}
	var out outer
	if err := decodeValue(body, nil, &out); err != nil {
		t.Fatal(err)
	}
	in.Skip, in.priv = 0, 0
	if !deepEqual(in, out) {
		t.Fatalf("got %+v, want %+v", out, in)
	}
	// Keys go in byte order: "A" < "B" < ... < "s".
	if !bytes.HasPrefix(body, []byte{tagRecord, 9, 1, 'A'}) {
		t.Fatalf("body starts %x", body[:8])
	}
}

func deepEqual(a, b outer) bool {
	ea, _, _, _ := encodeValue(a)
	eb, _, _, _ := encodeValue(b)
	return bytes.Equal(ea, eb)
}

func TestValueBounds(t *testing.T) {
	testutil.CheckLeaks(t)
	nest := func(n int) []byte {
		b := bytes.Repeat([]byte{tagList, 1}, n)
		return append(b, tagNil)
	}
	cases := []struct {
		name, want string
		body       []byte
		nfds       int
	}{
		{"empty", "truncated", nil, 0},
		{"unknown tag", "unknown tag 0xc", []byte{0x0c}, 0},
		{"trailing", "1 bytes after", []byte{tagNil, 0}, 0},
		{"too deep", "nested deeper than 32", nest(32), 0},
		{"overlong varint", "overlong", []byte{tagUint, 0x80, 0x00}, 0},
		{"varint 11 bytes", "bad varint", append([]byte{tagUint}, bytes.Repeat([]byte{0xff}, 11)...), 0},
		{"count past the end", "larger than the", []byte{tagList, 5, tagNil}, 0},
		{"huge count", "larger than the", []byte{tagBytes, 0xff, 0xff, 0xff, 0xff, 0x0f}, 0},
		{"string not utf-8", "not UTF-8", []byte{tagString, 1, 0xff}, 0},
		{"keys out of order", "keys must increase", []byte{tagRecord, 2, 1, 'b', tagNil, 1, 'a', tagNil}, 0},
		{"keys repeated", "keys must increase", []byte{tagRecord, 2, 1, 'a', tagNil, 1, 'a', tagNil}, 0},
		{"fd index out of range", "fd index 1, frame has 1", []byte{tagRef, 1}, 1},
		{"fd used twice", "used twice", []byte{tagList, 2, tagFile, 0, tagRef, 0}, 1},
		{"fd unused", "fd 1 of 2 is not used", []byte{tagFile, 0}, 2},
		{"short float", "truncated float", []byte{tagFloat, 1, 2}, 0},
	}
	for _, c := range cases {
		files := devNulls(t, c.nfds)
		var v any
		err := decodeValue(c.body, append([]*os.File(nil), files...), &v)
		if !errors.Is(err, errBadValue) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
		for _, f := range files {
			if err := f.Close(); !errors.Is(err, os.ErrClosed) {
				t.Errorf("%s: an fd of the frame was left open", c.name)
			}
		}
	}
	if _, err := checkValue(nest(31), 0); err != nil {
		t.Errorf("31 deep: %v", err)
	}
}

func TestValueTypes(t *testing.T) {
	testutil.CheckLeaks(t)
	enc := func(v any) []byte {
		b, _, _, err := encodeValue(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var i8 int8
	if err := decodeValue(enc(200), nil, &i8); err == nil || !strings.Contains(err.Error(), "out of range") {
		t.Errorf("200 into int8: %v", err)
	}
	var u uint
	if err := decodeValue(enc(-1), nil, &u); err == nil {
		t.Error("-1 into uint")
	}
	if err := decodeValue(enc(int64(5)), nil, &u); err != nil || u != 5 {
		t.Errorf("int 5 into uint: %d %v", u, err)
	}
	var s string
	if err := decodeValue(enc(5), nil, &s); err == nil || !strings.Contains(err.Error(), "int does not decode into string") {
		t.Errorf("int into string: %v", err)
	}
	var r *Ref
	if err := decodeValue(enc("x"), nil, &r); err == nil {
		t.Error("string into *Ref")
	}
	type only struct{ A int }
	var o only
	if err := decodeValue(enc(map[string]any{"A": 1, "Z": []any{"unknown", 2}}), nil, &o); err != nil || o.A != 1 {
		t.Errorf("unknown keys are skipped: %+v %v", o, err)
	}
	if _, _, _, err := encodeValue(map[int]int{1: 1}); err == nil {
		t.Error("map[int]int encodes")
	}
	if _, _, _, err := encodeValue(make(chan int)); err == nil {
		t.Error("chan encodes")
	}
	type loop struct{ Next any }
	l := &loop{}
	l.Next = l
	if _, _, _, err := encodeValue(l); err == nil || !strings.Contains(err.Error(), "deeper") {
		t.Errorf("a cycle: %v", err)
	}
	if err := decodeValue(enc(1), nil, o); err == nil {
		t.Error("decode into a non-pointer")
	}
}

// TestValueFDs: a file and a ref in a value come out as *os.File and
// *Ref; a file where a ref is due is refused and closed.
func TestValueFDs(t *testing.T) {
	testutil.CheckLeaks(t)
	files := devNulls(t, 1)
	type fr struct {
		F *os.File
		R *Ref
	}
	var v fr
	err := decodeValue([]byte{tagRecord, 2, 1, 'F', tagFile, 0, 1, 'R', tagRef, 0}, files, &v)
	if err == nil {
		t.Fatal("the same fd as file and ref")
	}
	files = devNulls(t, 2)
	err = decodeValue([]byte{tagRecord, 2, 1, 'F', tagFile, 0, 1, 'R', tagRef, 1}, append([]*os.File(nil), files...), &v)
	if err == nil || !strings.Contains(err.Error(), "not a SOCK_SEQPACKET") {
		t.Fatalf("/dev/null as a ref: %v", err)
	}
	for _, f := range files {
		if err := f.Close(); !errors.Is(err, os.ErrClosed) {
			t.Error("an fd was left open after a failed decode")
		}
	}
}

func devNulls(t *testing.T, n int) []*os.File {
	var fs []*os.File
	for i := 0; i < n; i++ {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		fs = append(fs, f)
	}
	return fs
}
