package dbuswire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

// helloLE is libdbus's Hello call, little-endian, assembled by hand from
// the spec: fixed header, then the fields PATH, INTERFACE, MEMBER,
// DESTINATION, each aligned to 8.
var helloLE = []byte("l\x01\x00\x01" + // order, METHOD_CALL, no flags, version 1
	"\x00\x00\x00\x00" + // body length 0
	"\x01\x00\x00\x00" + // serial 1
	"\x6d\x00\x00\x00" + // field array length 109
	"\x01\x01o\x00" + "\x15\x00\x00\x00/org/freedesktop/DBus\x00" + "\x00\x00" + // PATH, pad to 48
	"\x02\x01s\x00" + "\x14\x00\x00\x00org.freedesktop.DBus\x00" + "\x00\x00\x00" + // INTERFACE, pad to 80
	"\x03\x01s\x00" + "\x05\x00\x00\x00Hello\x00" + "\x00\x00" + // MEMBER, pad to 96
	"\x06\x01s\x00" + "\x14\x00\x00\x00org.freedesktop.DBus\x00" + // DESTINATION, ends at 125
	"\x00\x00\x00") // pad to 128

// helloBE is the same call big-endian.
var helloBE = []byte("B\x01\x00\x01" +
	"\x00\x00\x00\x00" +
	"\x00\x00\x00\x01" +
	"\x00\x00\x00\x6d" +
	"\x01\x01o\x00" + "\x00\x00\x00\x15/org/freedesktop/DBus\x00" + "\x00\x00" +
	"\x02\x01s\x00" + "\x00\x00\x00\x14org.freedesktop.DBus\x00" + "\x00\x00\x00" +
	"\x03\x01s\x00" + "\x00\x00\x00\x05Hello\x00" + "\x00\x00" +
	"\x06\x01s\x00" + "\x00\x00\x00\x14org.freedesktop.DBus\x00" +
	"\x00\x00\x00")

func TestHelloBothOrders(t *testing.T) {
	for _, msg := range [][]byte{helloLE, helloBE} {
		n, err := MessageLen(msg[:16])
		if err != nil || n != len(msg) {
			t.Fatalf("MessageLen = %d, %v; want %d", n, err, len(msg))
		}
		h, body, err := ParseMessage(msg)
		if err != nil {
			t.Fatalf("ParseMessage(%c): %v", msg[0], err)
		}
		want := Header{Order: msg[0], Type: TypeMethodCall, Serial: 1,
			Path: "/org/freedesktop/DBus", Interface: "org.freedesktop.DBus",
			Member: "Hello", Destination: "org.freedesktop.DBus"}
		if h != want || len(body) != 0 {
			t.Fatalf("ParseMessage(%c) = %+v, body %q; want %+v", msg[0], h, body, want)
		}
		if out := AppendMessage(nil, &h, nil); !bytes.Equal(out, msg) {
			t.Fatalf("AppendMessage(%c):\n got %q\nwant %q", msg[0], out, msg)
		}
	}
}

// reply returns a method return carrying the string ":1.1", assembled by
// hand in either byte order.
func reply(order byte) []byte {
	var bo binary.AppendByteOrder = binary.LittleEndian
	if order == 'B' {
		bo = binary.BigEndian
	}
	u := func(v uint32) string { return string(bo.AppendUint32(nil, v)) }
	fields := "\x05\x01u\x00" + u(1) + // REPLY_SERIAL 1: 16..24
		"\x06\x01s\x00" + u(4) + ":1.1\x00" + "\x00\x00\x00" + // DESTINATION: 24..37, pad to 40
		"\x08\x01g\x00" + "\x01s\x00" // SIGNATURE: 40..47
	msg := string([]byte{order, TypeMethodReturn, FlagNoReplyExpected, 1}) + u(9) + u(7) + u(uint32(len(fields))) +
		fields + "\x00" + // pad to 48
		u(4) + ":1.1\x00" // body
	return []byte(msg)
}

func TestReplyBothOrders(t *testing.T) {
	for _, order := range []byte{'l', 'B'} {
		msg := reply(order)
		h, body, err := ParseMessage(msg)
		if err != nil {
			t.Fatalf("ParseMessage(%c): %v", order, err)
		}
		want := Header{Order: order, Type: TypeMethodReturn, Flags: FlagNoReplyExpected, Serial: 7,
			ReplySerial: 1, Destination: ":1.1", Signature: "s", BodyLen: 9}
		if h != want {
			t.Fatalf("ParseMessage(%c) = %+v; want %+v", order, h, want)
		}
		if !bytes.Equal(body, msg[48:]) {
			t.Fatalf("body %q", body)
		}
		if out := AppendMessage([]byte("prefix"), &h, body); !bytes.Equal(out[6:], msg) || string(out[:6]) != "prefix" {
			t.Fatalf("AppendMessage(%c):\n got %q\nwant %q", order, out, msg)
		}
		d := NewDecoder(order, h.Signature, body)
		if s, err := d.String(); err != nil || s != ":1.1" || d.Done() != nil {
			t.Fatalf("body string %q, %v, %v", s, err, d.Done())
		}
	}
}

// withField returns helloLE with one more header field appended
// (code, variant signature, marshalled value), the lengths fixed up.
func withField(code byte, sig string, value []byte) []byte {
	msg := append([]byte(nil), helloLE[:125]...)
	msg = padTo(msg, 0, 8)
	msg = append(msg, code, byte(len(sig)))
	msg = append(msg, sig...)
	msg = append(msg, 0)
	msg = append(msg, value...)
	binary.LittleEndian.PutUint32(msg[12:], uint32(len(msg)-16))
	return padTo(msg, 0, 8)
}

func TestUnknownFieldsSkipped(t *testing.T) {
	for _, tc := range []struct {
		sig   string
		value string
	}{
		{"y", "\x07"},
		{"s", "\x03\x00\x00\x00abc\x00"},
		{"as", "\x00\x00\x00" + "\x0e\x00\x00\x00" + "\x01\x00\x00\x00a\x00\x00\x00" + "\x01\x00\x00\x00b\x00"},
		{"v", "\x01t\x00" + "\x00" + "\x01\x00\x00\x00\x00\x00\x00\x00"},
		{"(yv)", "\x00" + "\x05" + "\x01y\x00" + "\x09"},
		{"a{sv}", "\x00\x00\x00\x00" + "\x00\x00\x00\x00"},
	} {
		msg := withField(42, tc.sig, []byte(tc.value))
		h, _, err := ParseMessage(msg)
		if err != nil {
			t.Errorf("unknown field of type %q: %v", tc.sig, err)
			continue
		}
		if h.Member != "Hello" {
			t.Errorf("unknown field of type %q: header %+v", tc.sig, h)
		}
	}
}

// Flags and message types the bus does not know pass through: the spec
// says a receiver ignores them, and busctl sets flags by default.
func TestUnknownFlagsAndTypes(t *testing.T) {
	msg := append([]byte(nil), helloLE...)
	msg[1], msg[2] = 9, 0xf4
	h, _, err := ParseMessage(msg)
	if err != nil || h.Type != 9 || h.Flags != 0xf4 {
		t.Fatalf("ParseMessage = %+v, %v", h, err)
	}
	if out := AppendMessage(nil, &h, nil); !bytes.Equal(out, msg) {
		t.Fatalf("AppendMessage:\n got %q\nwant %q", out, msg)
	}
}

func TestParseMessageRejects(t *testing.T) {
	le := binary.LittleEndian
	mut := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), helloLE...)) }
	cases := []struct {
		name string
		msg  []byte
		want string
	}{
		{"short", helloLE[:10], "16 bytes"},
		{"order", mut(func(b []byte) []byte { b[0] = 'x'; return b }), "endianness"},
		{"version", mut(func(b []byte) []byte { b[3] = 2; return b }), "version 2"},
		{"type 0", mut(func(b []byte) []byte { b[1] = 0; return b }), "type 0"},
		{"serial 0", mut(func(b []byte) []byte { le.PutUint32(b[8:], 0); return b }), "serial 0"},
		{"length", helloLE[:120], "header says 128"},
		{"array limit", mut(func(b []byte) []byte { le.PutUint32(b[12:], 1<<26+1); return b }), "64 MiB"},
		{"total limit", mut(func(b []byte) []byte { le.PutUint32(b[4:], 1<<27); return b }), "limit"},
		{"bad path", mut(func(b []byte) []byte { b[25] = '-'; return b }), "object path"},
		{"bad member", mut(func(b []byte) []byte { b[88] = '1'; return b }), "member"},
		{"field type", mut(func(b []byte) []byte { b[82] = 'o'; return b }), "MEMBER has type"},
		{"padding", mut(func(b []byte) []byte { b[46] = 1; return b }), "padding"},
		{"tail padding", mut(func(b []byte) []byte { b[127] = 1; return b }), "padding"},
		{"no NUL", mut(func(b []byte) []byte { b[93] = 'x'; return b }), "NUL"},
		{"body without signature", mut(func(b []byte) []byte { le.PutUint32(b[4:], 4); return append(b, 0, 0, 0, 0) }), "without a SIGNATURE"},
		{"duplicate", withField(fieldMember, "s", []byte("\x03\x00\x00\x00Bye\x00")), "twice"},
		{"code 0", withField(0, "y", []byte{1}), "code 0"},
		{"reply serial 0", withField(fieldReplySerial, "u", []byte{0, 0, 0, 0}), "REPLY_SERIAL 0"},
		{"bad signature", withField(fieldSignature, "g", []byte("\x02a(\x00")), "signature"},
		{"unknown field bad sig", withField(42, "ii", []byte("\x00\x00\x00\x00\x00\x00\x00\x00")), "variant signature"},
		{"unknown field short", withField(42, "t", []byte("\x00\x00\x00\x00")), "truncated"},
		{"unknown field bool", withField(42, "b", []byte("\x02\x00\x00\x00")), "boolean"},
		{"local interface", mut(func(b []byte) []byte {
			h, _, _ := ParseMessage(helloLE)
			h.Interface = localInterface
			return AppendMessage(nil, &h, nil)
		}), "reserved interface"},
		{"call without member", mut(func(b []byte) []byte {
			h, _, _ := ParseMessage(helloLE)
			h.Member = ""
			return AppendMessage(nil, &h, nil)
		}), "without the MEMBER"},
		{"signal without interface", mut(func(b []byte) []byte {
			h, _, _ := ParseMessage(helloLE)
			h.Type, h.Interface = TypeSignal, ""
			return AppendMessage(nil, &h, nil)
		}), "without the INTERFACE"},
		{"error without reply serial", mut(func(b []byte) []byte {
			h := Header{Type: TypeError, Serial: 3, ErrorName: "a.b"}
			return AppendMessage(nil, &h, nil)
		}), "without the REPLY_SERIAL"},
		{"return without reply serial", mut(func(b []byte) []byte {
			h := Header{Type: TypeMethodReturn, Serial: 3}
			return AppendMessage(nil, &h, nil)
		}), "without the REPLY_SERIAL"},
		{"bad destination", mut(func(b []byte) []byte {
			h, _, _ := ParseMessage(helloLE)
			h.Destination = "nodots"
			return AppendMessage(nil, &h, nil)
		}), "destination"},
	}
	for _, tc := range cases {
		_, _, err := ParseMessage(tc.msg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v; want one saying %q", tc.name, err, tc.want)
			continue
		}
		if tc.name != "short" && !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v does not wrap ErrInvalid", tc.name, err)
		}
	}
	if _, err := MessageLen(helloLE[:15]); err != ErrShort {
		t.Errorf("MessageLen of 15 bytes: %v", err)
	}
}

func TestNames(t *testing.T) {
	for _, tc := range []struct {
		f    func(string) bool
		name string
		ok   []string
		bad  []string
	}{
		{ValidObjectPath, "path", []string{"/", "/a", "/a/b_c/D9"}, []string{"", "a", "//", "/a/", "/a//b", "/a-b", "/a.b"}},
		{ValidInterface, "interface", []string{"a.b", "org.freedesktop.DBus", "_a.b_9"}, []string{"", "a", "a.", ".a", "a..b", "a.9b", "a-b.c", strings.Repeat("a.", 128) + "a"}},
		{ValidMember, "member", []string{"Hello", "_x9"}, []string{"", "9x", "a.b", "a-b", strings.Repeat("a", 256)}},
		{ValidErrorName, "error", []string{"org.freedesktop.DBus.Error.Failed"}, []string{"Failed"}},
		{ValidUniqueName, "unique", []string{":1.1", ":a-b.9_"}, []string{"1.1", ":1", ":", ":1..1", ":1.1."}},
		{ValidBusName, "bus", []string{":1.1", "org.freedesktop.DBus", "a-b.c_d"}, []string{"", "a", "a.9b", ":x", "a.b/c", "a.b.", strings.Repeat("a.", 128) + "a"}},
		{ValidSignature, "signature", []string{"", "s", "a{sv}", "(i(ss))", "aay", "a(sa{sv})v", strings.Repeat("a", 32) + "y"},
			[]string{"a", "()", "(", "a{vs}", "{sv}", "a{s}", "a{svs}", "z", strings.Repeat("a", 33) + "y", strings.Repeat("(", 33) + "y" + strings.Repeat(")", 33), strings.Repeat("y", 256)}},
	} {
		for _, s := range tc.ok {
			if !tc.f(s) {
				t.Errorf("%s %q rejected", tc.name, s)
			}
		}
		for _, s := range tc.bad {
			if tc.f(s) {
				t.Errorf("%s %q accepted", tc.name, s)
			}
		}
	}
}

func BenchmarkParseAppend(b *testing.B) {
	h := Header{Order: 'l', Type: TypeMethodCall, Serial: 9, Path: "/com/example/Obj",
		Interface: "com.example.Iface", Member: "Method", Destination: "com.example.Service", Signature: "s"}
	body := append([]byte{59, 0, 0, 0}, strings.Repeat("x", 59)+"\x00"...)
	if len(body) != 64 {
		b.Fatalf("body of %d bytes", len(body))
	}
	msg := AppendMessage(nil, &h, body)
	out := make([]byte, 0, 512)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		h, body, err := ParseMessage(msg)
		if err != nil {
			b.Fatal(err)
		}
		h.Sender = ":1.42"
		out = AppendMessage(out[:0], &h, body)
	}
}
