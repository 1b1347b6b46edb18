package bus

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"syscall"
	"testing"
)

// unhex reads the doc's hex notation: spaces and newlines ignored.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func le64s(v uint64) string {
	return hex.EncodeToString(binary.LittleEndian.AppendUint64(nil, v))
}

const docA, docB = 7, 9 // the addresses the outline's <A:8>, <B:8> stand for

// docOutline transcribes the byte sequences of docs/protocol-bus.md, "A
// minimal client, in outline", with A = 7 and B = 9.
func docOutline(t testing.TB) map[string][]byte {
	A, B := le64s(docA), le64s(docB)
	hexs := func(s string) string { return hex.EncodeToString([]byte(s)) }
	return map[string][]byte{
		"hello": unhex(t, `01 10 00 00  00 00 00 00  0c 00 00 00  00 00 00 00
			01 00 00 00 00 00 00 00  0000000000000000  0000000000000000  01 00 00 00 00 00 00 00
			01 00 00 00  04 00 00 00  64 65 6d 6f`),
		"request_name": unhex(t, `01 14 00 00  00 00 00 00  20 00 00 00  00 00 00 00
			0200000000000000 0000000000000000 `+A+` 0100000000000000
			`+A+` 04 00 00 00  10 00 00 00 `+hexs("com.example.echo")),
		"add_match": unhex(t, `01 18 00 00  00 00 00 00  98 00 00 00  00 00 00 00
			0300000000000000 0000000000000000 `+A+` 0100000000000000
			0100000000000000 0100000000000000 40 00 03 00 00 00 00 00
			0000101100000080002000002a008040000800000000000010004002
			000008400000000200000000000000000000000000000100000200000400000000200104
			03 00 14 00 `+hexs("org.freedesktop.DBus")+` 04 00 10 00 `+hexs("NameOwnerChanged")+`
			05 00 10 00 `+hexs("com.example.peer")),
		"connect": unhex(t, `01 16 00 00  00 00 00 00  28 00 00 00  00 00 00 00
			0400000000000000 0000000000000000 `+A+` 0100000000000000
			`+A+` 0000000000000000 00 00 00 00 10 00 00 00 `+hexs("com.example.peer")),
		"call": unhex(t, `01 01 00 00  20 00 00 00  02 00 00 00  00 00 00 00
			0500000000000000 0000000000000000 `+A+B+`
			04 00 04 00 `+hexs("Echo")+`
			01 00 10 00 `+hexs("com.example.peer")+` 00 00 00 00
			`+hexs("hi")),
		"reply": unhex(t, `01 02 00 00  00 00 00 00  02 00 00 00  00 00 00 00
			0100000000000000 0500000000000000 `+B+A+hexs("hi")),
	}
}

// TestDocOutline checks that the outline's frames decode, on the path
// they travel, to what the outline says they are, and that building the
// same frames with this package gives the outline's bytes.
func TestDocOutline(t *testing.T) {
	doc := docOutline(t)
	toMaster := &Rules{Path: PathToMaster, Joined: true}
	decode := func(name string, r *Rules) *Frame {
		t.Helper()
		f, err := r.Decode(doc[name], 0)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return f
	}
	build := func(name string, f *Frame) {
		t.Helper()
		b, err := f.MarshalBinary()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(b, doc[name]) {
			t.Errorf("%s:\n built %x\n doc   %x", name, b, doc[name])
		}
	}

	f := decode("hello", &Rules{Path: PathToMaster})
	h, err := ParseHello(f.Body)
	if err != nil || h != (HelloBody{Flags: HelloAcceptFDs, Label: "demo"}) || f.Serial != 1 || f.Destination != AddrBus {
		t.Fatalf("hello: %+v %+v %v", f, h, err)
	}
	build("hello", &Frame{Type: TypeHello, Serial: 1, Destination: AddrBus, Body: h.Encode()})

	f = decode("request_name", toMaster)
	nb, err := ParseName(TypeRequestName, f.Body)
	if err != nil || nb != (NameBody{Address: docA, Flags: NameDoNotQueue, Name: "com.example.echo"}) {
		t.Fatalf("request_name: %+v %v", nb, err)
	}
	build("request_name", &Frame{Type: TypeRequestName, Serial: 2, Source: docA, Destination: AddrBus, Body: nb.Encode()})

	f = decode("add_match", toMaster)
	m, err := ParseAddMatch(DefaultBloom, f.Body)
	if err != nil {
		t.Fatalf("add_match: %v", err)
	}
	rules := []Rule{{Kind: RuleInterface, Value: "org.freedesktop.DBus"}, {Kind: RuleMember, Value: "NameOwnerChanged"},
		{Kind: RuleArg, Index: 0, Value: "com.example.peer"}}
	if m.Cookie != 1 || m.Sender != AddrBus || len(m.Rules) != 3 || m.Rules[2] != rules[2] {
		t.Fatalf("add_match: %+v", m)
	}
	build("add_match", &Frame{Type: TypeAddMatch, Serial: 3, Source: docA, Destination: AddrBus,
		Body: AddMatchBody{Cookie: 1, Sender: AddrBus, Bloom: MatchBloom(DefaultBloom, rules), Rules: rules}.Encode()})

	f = decode("connect", toMaster)
	c, err := ParseConnect(f.Body)
	if err != nil || c != (ConnectBody{Source: docA, Name: "com.example.peer"}) {
		t.Fatalf("connect: %+v %v", c, err)
	}
	build("connect", &Frame{Type: TypeConnect, Serial: 4, Source: docA, Destination: AddrBus, Body: c.Encode()})

	f = decode("call", &Rules{Path: PathChannel})
	if f.Type != TypeCall || f.Text(FieldMember) != "Echo" || f.Text(FieldDestName) != "com.example.peer" ||
		string(f.Body) != "hi" || f.Serial != 5 || f.Source != docA || f.Destination != docB {
		t.Fatalf("call: %+v", f)
	}
	build("call", &Frame{Type: TypeCall, Serial: 5, Source: docA, Destination: docB,
		Fields: []Field{{FieldMember, []byte("Echo")}, {FieldDestName, []byte("com.example.peer")}}, Body: []byte("hi")})
	// The same CALL routed, on the master connection.
	decode("call", toMaster)

	f = decode("reply", &Rules{Path: PathChannel})
	if f.Type != TypeReply || f.ReplySerial != 5 || string(f.Body) != "hi" {
		t.Fatalf("reply: %+v", f)
	}
}

// TestHeaderOffsets puts a distinct value in every header field and
// checks each lands at the doc's offset, little-endian.
func TestHeaderOffsets(t *testing.T) {
	f := &Frame{Type: TypeCall, Flags: FlagNoReplyExpected | 0x80, NFDs: 0x0203,
		Serial: 0x1112131415161718, ReplySerial: 0x2122232425262728, Source: 0x3132333435363738, Destination: 0x4142434445464748,
		Fields: []Field{{FieldMember, []byte("M")}}, Body: []byte{0xaa, 0xbb, 0xcc}}
	b, err := f.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	want := unhex(t, `01 01 81 00  08 00 00 00  03 00 00 00  03 02 00 00
		1817161514131211 2827262524232221 3837363534333231 4847464544434241
		04 00 01 00 4d 00 00 00  aa bb cc`)
	if !bytes.Equal(b, want) {
		t.Fatalf("\n got  %x\n want %x", b, want)
	}
	g, err := (&Rules{MaxFDs: 1024}).decodeStructure(b, -1)
	if err != nil {
		t.Fatal(err)
	}
	if g.Flags != f.Flags || g.NFDs != f.NFDs || g.Serial != f.Serial || g.ReplySerial != f.ReplySerial ||
		g.Source != f.Source || g.Destination != f.Destination || !bytes.Equal(g.Body, f.Body) {
		t.Fatalf("decoded %+v", g)
	}
}

// TestFieldPadding checks the padding rule for values of every length
// mod 8, and that unknown non-critical fields survive a round trip.
func TestFieldPadding(t *testing.T) {
	for n := 0; n <= 17; n++ {
		f := &Frame{Type: TypeCall, Serial: 1, Destination: 9,
			Fields: []Field{{0x7777, bytes.Repeat([]byte{'x'}, n)}, {FieldMember, []byte("M")}}}
		b, err := f.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if fl := binary.LittleEndian.Uint32(b[4:]); fl%8 != 0 || int(fl) != (4+n+7)/8*8+8 {
			t.Fatalf("n=%d: fields_len %d", n, fl)
		}
		g, err := Decode(b)
		if err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		if again, _ := g.MarshalBinary(); !bytes.Equal(again, b) {
			t.Fatalf("n=%d: round trip differs", n)
		}
		if v, ok := g.Field(0x7777); !ok || len(v) != n {
			t.Fatalf("n=%d: unknown field lost", n)
		}
	}
}

// frame builds a valid routed CALL from 7 to 9 and lets mod change it.
func frame(mod func(*Frame)) *Frame {
	f := &Frame{Type: TypeCall, Serial: 1, Source: 7, Destination: 9,
		Fields: []Field{{FieldMember, []byte("Echo_")}}, Body: []byte("hi")}
	if mod != nil {
		mod(f)
	}
	return f
}

func enc(f *Frame) []byte {
	b, err := f.MarshalBinary()
	if err != nil {
		panic(err)
	}
	return b
}

// patch returns a copy of b with b[off] = v.
func patch(b []byte, off int, v ...byte) []byte {
	c := bytes.Clone(b)
	copy(c[off:], v)
	return c
}

// TestValidation feeds one frame per failure of the doc's checks and
// checks the code it gets.
func TestValidation(t *testing.T) {
	good := enc(frame(nil))
	routed := Rules{Path: PathToMaster, Joined: true}
	channel := Rules{Path: PathChannel}
	toEndpoint := Rules{Path: PathFromMaster, Joined: true}
	big := func(n int) []byte {
		return enc(frame(func(f *Frame) { f.Body = make([]byte, n-HeaderSize-16) }))
	}
	signal := func(mod func(*Frame)) []byte {
		return enc(frame(func(f *Frame) {
			f.Type, f.Destination = TypeSignal, 0
			f.Fields = []Field{{FieldPath, []byte("/a")}, {FieldInterface, []byte("a.b")}, {FieldMember, []byte("C")},
				{FieldBloom, make([]byte, 64)}}
			if mod != nil {
				mod(f)
			}
		}))
	}
	ctl := func(typ Type, src, dst uint64, body []byte) []byte {
		return enc(&Frame{Type: typ, Serial: 1, Source: src, Destination: dst, Body: body})
	}
	cases := []struct {
		name  string
		rules Rules
		b     []byte
		fds   int
		code  Code
	}{
		{"good", routed, good, 0, 0},
		{"good on a channel", channel, good, 0, 0},
		{"empty packet", Rules{}, nil, -1, CodeMalformed},
		{"47 bytes", Rules{}, good[:47], -1, CodeMalformed},
		{"max_frame+1 from the master", toEndpoint, big(DefaultMaxFrame + 1), -1, CodeTooLarge},
		{"max_frame from the master", toEndpoint, big(DefaultMaxFrame), -1, 0},
		{"max_frame-63 from an endpoint", routed, big(DefaultMaxFrame - 63), -1, CodeTooLarge},
		{"max_frame-64 from an endpoint", routed, big(DefaultMaxFrame - 64), -1, 0},
		{"size before version", routed, patch(big(DefaultMaxFrame-63), 0, 2), -1, CodeTooLarge},
		{"version 2", Rules{}, patch(good, 0, 2), -1, CodeVersion},
		{"version before type", Rules{}, patch(good, 0, 0, 0x7f), -1, CodeVersion},
		{"unknown type", Rules{}, patch(good, 1, 0x05), -1, CodeMalformed},
		{"master type to the master", routed, ctl(TypeDone, 1, 7, make([]byte, 16)), -1, CodeMalformed},
		{"END to the master", routed, patch(good, 1, byte(TypeEnd)), -1, CodeMalformed},
		{"control type on a channel", channel, ctl(TypeBye, 7, 1, nil), -1, CodeMalformed},
		{"request to an endpoint", toEndpoint, ctl(TypeBye, 7, 1, nil), -1, CodeMalformed},
		{"CALL before HELLO", Rules{Path: PathToMaster}, good, -1, CodeNotJoined},
		{"second HELLO", routed, ctl(TypeHello, 0, 1, HelloBody{}.Encode()), -1, CodeNotJoined},
		{"DONE before WELCOME", Rules{Path: PathFromMaster}, ctl(TypeDone, 1, 7, make([]byte, 16)), -1, CodeNotJoined},
		{"FAIL before WELCOME", Rules{Path: PathFromMaster}, ctl(TypeFail, 1, 0, FailBody{Code: CodeDenied}.Encode()), -1, 0},
		{"type before lengths", Rules{}, patch(good, 1, 0x05, 0, 1), -1, CodeMalformed},
		{"not joined before lengths", Rules{Path: PathToMaster}, patch(good, 8, 0xff), -1, CodeNotJoined},
		{"fields_len above 8192", Rules{}, patch(good, 4, 0x08, 0x20), -1, CodeTooLarge},
		{"fields_len not a multiple of 8", Rules{}, patch(good, 4, 4), -1, CodeMalformed},
		{"body_len too long", Rules{}, patch(good, 8, 3), -1, CodeMalformed},
		{"body_len too short", Rules{}, patch(good, 8, 1), -1, CodeMalformed},
		{"reserved header bytes", Rules{}, patch(good, 14, 1), -1, CodeMalformed},
		{"flag bit 8", Rules{}, patch(good, 3, 1), -1, CodeMalformed},
		{"flags on a control frame", Rules{}, patch(ctl(TypeBye, 7, 1, nil), 2, 1), -1, CodeMalformed},
		{"field past fields_len", Rules{}, patch(good, 50, 0x20), -1, CodeMalformed},
		{"nonzero padding", Rules{}, patch(good, 60, 'x'), -1, CodeMalformed},
		{"duplicate field", Rules{}, enc(frame(func(f *Frame) {
			f.Fields = append(f.Fields, Field{FieldPath, []byte("/")})
		})), -1, 0},
		{"field on a control frame", Rules{}, enc(&Frame{Type: TypeBye, Serial: 1, Source: 7, Destination: 1,
			Fields: []Field{{FieldMember, []byte("X")}}}), -1, CodeMalformed},
		{"SENDER_CRED from an endpoint", routed, enc(frame(func(f *Frame) { f.SetField(FieldSenderCred, SenderCred{}.Encode()) })), -1, CodeMalformed},
		{"SENDER_CRED on a channel", channel, enc(frame(func(f *Frame) { f.SetField(FieldSenderCred, SenderCred{}.Encode()) })), -1, CodeMalformed},
		{"SENDER_CRED from the master", toEndpoint, enc(frame(func(f *Frame) { f.SetField(FieldSenderCred, SenderCred{1, 2, 3}.Encode()) })), -1, 0},
		{"SENDER_CRED reserved bytes", toEndpoint, enc(frame(func(f *Frame) {
			f.SetField(FieldSenderCred, patch(SenderCred{}.Encode(), 12, 1))
		})), -1, CodeMalformed},
		{"BYE to an endpoint", toEndpoint, ctl(TypeBye, 7, 1, nil), -1, CodeMalformed},
		{"second WELCOME", toEndpoint, ctl(TypeWelcome, 1, 7, DefaultWelcome().Encode()), -1, CodeNotJoined},
		{"MONITOR copy of a WELCOME", Rules{Path: PathFromMaster, Joined: true, Monitor: true}, enc(&Frame{Type: TypeWelcome, Serial: 1, Source: 1, Destination: 9,
			Fields: []Field{{FieldMonitor, MonitorInfo{From: 1, To: 9}.Encode()}}, Body: DefaultWelcome().Encode()}), -1, 0},
		{"MONITOR copy of a request", Rules{Path: PathFromMaster, Joined: true, Monitor: true}, enc(&Frame{Type: TypeBye, Serial: 1, Source: 7, Destination: 1,
			Fields: []Field{{FieldMonitor, MonitorInfo{From: 7, To: 1}.Encode()}}}), -1, 0},
		{"MEMFD wrong length", Rules{}, enc(frame(func(f *Frame) { f.Body = nil; f.SetField(FieldMemfd, make([]byte, 8)) })), -1, CodeMalformed},
		{"fields before nfds", Rules{}, patch(patch(good, 60, 'x'), 12, 0xff), -1, CodeMalformed},
		{"nfds above max_fds", Rules{}, patch(good, 12, 17), -1, CodeTooLarge},
		{"nfds at max_fds", Rules{}, patch(good, 12, 16), 16, 0},
		{"fds on a control frame", Rules{}, patch(ctl(TypeBye, 7, 1, nil), 12, 1), -1, CodeMalformed},
		{"fewer fds than nfds", Rules{}, patch(good, 12, 2), 1, CodeMalformed},
		{"more fds than nfds", Rules{}, good, 1, CodeMalformed},
		{"memfd counted", Rules{}, enc(frame(func(f *Frame) { f.Body = nil; f.SetField(FieldMemfd, Memfd{Size: 1 << 20}.Encode()) })), 1, 0},
		{"memfd missing", Rules{}, enc(frame(func(f *Frame) { f.Body = nil; f.SetField(FieldMemfd, Memfd{Size: 1 << 20}.Encode()) })), 0, CodeMalformed},
		{"fd count before values", Rules{}, patch(good, 16, 0, 0, 0, 0, 0, 0, 0, 0), 1, CodeMalformed},
		{"critical unknown field", Rules{}, enc(frame(func(f *Frame) { f.SetField(0x8001, nil) })), -1, CodeUnknownField},
		{"unknown field", Rules{}, enc(frame(func(f *Frame) { f.SetField(0x0042, []byte("?")) })), -1, 0},
		{"unknown critical before values", Rules{}, enc(frame(func(f *Frame) { f.Serial = 0; f.SetField(0x8001, nil) })), -1, CodeUnknownField},
		{"serial 0", Rules{}, enc(frame(func(f *Frame) { f.Serial = 0 })), -1, CodeInvalid},
		{"reserved source", Rules{}, enc(frame(func(f *Frame) { f.Source = 1 << 63 })), -1, CodeInvalid},
		{"reserved destination", Rules{}, enc(frame(func(f *Frame) { f.Destination = 1<<64 - 1 })), -1, CodeInvalid},
		{"request not to the bus", routed, ctl(TypeBye, 7, 9, nil), -1, CodeInvalid},
		{"HELLO with a source", Rules{Path: PathToMaster}, ctl(TypeHello, 7, 1, HelloBody{}.Encode()), -1, CodeInvalid},
		{"DONE not from the bus", toEndpoint, ctl(TypeDone, 7, 7, make([]byte, 16)), -1, CodeInvalid},
		{"CALL without MEMBER", Rules{}, enc(frame(func(f *Frame) { f.Fields = nil })), -1, CodeInvalid},
		{"CALL to nobody", Rules{}, enc(frame(func(f *Frame) { f.Destination = 0 })), -1, CodeInvalid},
		{"CALL by name", Rules{}, enc(frame(func(f *Frame) { f.Destination = 0; f.SetField(FieldDestName, []byte("a.b")) })), -1, 0},
		{"bad DEST_NAME", Rules{}, enc(frame(func(f *Frame) { f.SetField(FieldDestName, []byte(":1.7")) })), -1, CodeInvalid},
		{"bad MEMBER", Rules{}, enc(frame(func(f *Frame) { f.SetField(FieldMember, []byte("Ech.o")) })), -1, CodeInvalid},
		{"bad PATH", Rules{}, enc(frame(func(f *Frame) { f.SetField(FieldPath, []byte("/a/")) })), -1, CodeInvalid},
		{"bad INTERFACE", Rules{}, enc(frame(func(f *Frame) { f.SetField(FieldInterface, []byte("a-b.c")) })), -1, CodeInvalid},
		{"SIGNATURE over 255", Rules{}, enc(frame(func(f *Frame) { f.SetField(FieldSignature, make([]byte, 256)) })), -1, CodeInvalid},
		{"D-Bus field over 1024", Rules{}, enc(frame(func(f *Frame) { f.SetField(0x0105, make([]byte, 1025)) })), -1, CodeInvalid},
		{"D-Bus field", Rules{}, enc(frame(func(f *Frame) { f.SetField(0x0105, make([]byte, 1024)) })), -1, 0},
		{"ARGS not increasing", Rules{}, enc(frame(func(f *Frame) { f.SetField(FieldArgs, unhex(t, "01010000 01010000")) })), -1, CodeInvalid},
		{"ARGS index 16", Rules{}, enc(frame(func(f *Frame) { f.SetField(FieldArgs, unhex(t, "10010000")) })), -1, CodeInvalid},
		{"ARGS kind 3", Rules{}, enc(frame(func(f *Frame) { f.SetField(FieldArgs, unhex(t, "00030000")) })), -1, CodeInvalid},
		{"ARGS NUL", Rules{}, enc(frame(func(f *Frame) { f.SetField(FieldArgs, unhex(t, "0001010000")) })), -1, CodeInvalid},
		{"ARGS entry cut", Rules{}, enc(frame(func(f *Frame) { f.SetField(FieldArgs, unhex(t, "00010500 61")) })), -1, CodeInvalid},
		{"ARGS path", Rules{}, enc(frame(func(f *Frame) { f.SetField(FieldArgs, unhex(t, "00020200 2f61 03010100 62")) })), -1, 0},
		{"REPLY without reply_serial", Rules{}, enc(frame(func(f *Frame) { f.Type = TypeReply })), -1, CodeInvalid},
		{"ERROR without ERROR_NAME", Rules{}, enc(frame(func(f *Frame) { f.Type, f.ReplySerial = TypeError, 3 })), -1, CodeInvalid},
		{"unicast SIGNAL without PATH", Rules{}, enc(frame(func(f *Frame) { f.Type = TypeSignal })), -1, CodeInvalid},
		{"multicast SIGNAL", routed, signal(nil), -1, 0},
		{"multicast SIGNAL without BLOOM", routed, signal(func(f *Frame) { f.DelField(FieldBloom) }), -1, CodeInvalid},
		{"multicast SIGNAL on a channel", channel, signal(nil), -1, CodeInvalid},
		{"BLOOM of the wrong size", routed, signal(func(f *Frame) { f.SetField(FieldBloom, make([]byte, 32)) }), -1, CodeBadBloom},
		{"BLOOM of bloom_size 32", Rules{Path: PathToMaster, Joined: true, BloomSize: 32}, signal(func(f *Frame) { f.SetField(FieldBloom, make([]byte, 32)) }), -1, 0},
		{"inline body with MEMFD", Rules{}, enc(frame(func(f *Frame) { f.SetField(FieldMemfd, Memfd{Size: 2}.Encode()) })), 1, CodeBadMemfd},
		{"source 0 routed", routed, enc(frame(func(f *Frame) { f.Source = 0 })), -1, CodeBadSource},
		{"source 1 on a channel", channel, enc(frame(func(f *Frame) { f.Source = 1 })), -1, CodeBadSource},
		{"source 1 from the master", toEndpoint, enc(frame(func(f *Frame) { f.Source = 1 })), -1, 0},
		{"END from source 1", channel, enc(&Frame{Type: TypeEnd, Serial: 1, Source: 1, Destination: 9}), -1, CodeBadSource},
		{"INVALID before BAD_SOURCE", routed, enc(frame(func(f *Frame) { f.Source = 0; f.Fields = nil })), -1, CodeInvalid},
		{"routed CALL to the bus", routed, enc(frame(func(f *Frame) { f.Destination = 1 })), -1, CodeUnknownAddress},
		{"BAD_SOURCE before UNKNOWN_ADDRESS", routed, enc(frame(func(f *Frame) { f.Source, f.Destination = 1, 1 })), -1, CodeBadSource},
		{"destination 0 on a channel", channel, enc(frame(func(f *Frame) { f.Destination = 0; f.SetField(FieldDestName, []byte("a.b")) })), -1, CodeInvalid},
	}
	for _, c := range cases {
		if c.name == "duplicate field" {
			// MarshalBinary refuses it; build it by hand from a good frame.
			c.b = patch(enc(frame(func(f *Frame) { f.SetField(FieldPath, []byte("/xyz")) })), 64, 4, 0, 4, 0)
			c.code = CodeMalformed
		}
		f, err := c.rules.Decode(c.b, c.fds)
		if c.code == 0 {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			} else if again, _ := f.MarshalBinary(); !bytes.Equal(again, c.b) {
				t.Errorf("%s: re-encodes differently", c.name)
			}
			continue
		}
		if got := CodeOf(err); got != c.code {
			t.Errorf("%s: got %v (%v), want %v", c.name, got, err, c.code)
			continue
		}
		if !errors.Is(err, c.code.Errno()) || !errors.Is(err, &Error{Code: c.code}) || !errors.Is(err, &Error{Op: "decode", Code: c.code}) {
			t.Errorf("%s: %v is not %v / %v", c.name, err, c.code.Errno(), c.code)
		}
		if !strings.HasPrefix(err.Error(), "bus: decode: "+c.code.String()+": ") {
			t.Errorf("%s: message %q", c.name, err)
		}
	}
}

// TestEncodeRefuses checks the encoder refuses what no receiver could
// take apart.
func TestEncodeRefuses(t *testing.T) {
	for name, f := range map[string]*Frame{
		"flag bit 15":    frame(func(f *Frame) { f.Flags = 0x8000 }),
		"duplicate code": frame(func(f *Frame) { f.Fields = append(f.Fields, f.Fields[0]) }),
		"long value":     frame(func(f *Frame) { f.SetField(0x0042, make([]byte, 0x10000)) }),
		"fields_len":     frame(func(f *Frame) { f.SetField(0x0042, make([]byte, MaxFieldsLen)) }),
	} {
		if _, err := f.MarshalBinary(); err == nil {
			t.Errorf("%s: encoded", name)
		}
	}
}

// TestCodes checks the Errors table: names, errnos, fatal flags.
func TestCodes(t *testing.T) {
	for _, c := range []struct {
		code  Code
		name  string
		errno syscall.Errno
		fatal bool
	}{
		{1, "MALFORMED", syscall.EPROTO, true}, {2, "VERSION", syscall.EPROTONOSUPPORT, true},
		{3, "TOO_LARGE", syscall.EMSGSIZE, true}, {4, "NOT_JOINED", syscall.EPROTO, true},
		{5, "CRED_MISMATCH", syscall.EACCES, true}, {6, "DENIED", syscall.EACCES, false},
		{7, "INVALID", syscall.EINVAL, false}, {8, "UNKNOWN_ADDRESS", syscall.ENXIO, false},
		{9, "NAME_HAS_NO_OWNER", syscall.ENOENT, false}, {10, "BAD_SOURCE", syscall.EADDRNOTAVAIL, false},
		{11, "QUOTA", syscall.EDQUOT, false}, {12, "QUEUE_FULL", syscall.ENOBUFS, false},
		{13, "FDS_REFUSED", syscall.EOPNOTSUPP, false}, {14, "FD_LIMIT", syscall.EMFILE, false},
		{15, "BAD_MEMFD", syscall.EBADF, false}, {16, "BAD_BLOOM", syscall.EINVAL, false},
		{17, "UNEXPECTED_REPLY", syscall.ENOMSG, false}, {18, "PEER_GONE", syscall.ECONNRESET, false},
		{19, "NAME_MOVED", syscall.ESTALE, false}, {20, "NOT_FOUND", syscall.ENOENT, false},
		{21, "UNKNOWN_FIELD", syscall.EPROTO, false}, {22, "EXPELLED", syscall.ETIMEDOUT, true},
		{23, "SHUTTING_DOWN", syscall.ESHUTDOWN, true}, {24, "INTERNAL", syscall.EIO, false},
		{30, "REVOKED", syscall.ECONNABORTED, false}, {31, "TIMEOUT", syscall.ETIMEDOUT, false},
	} {
		if c.code.String() != c.name || c.code.Errno() != c.errno || c.code.Fatal() != c.fatal {
			t.Errorf("code %d: %v %v %v", uint16(c.code), c.code, c.code.Errno(), c.code.Fatal())
		}
		if got, ok := CodeOfErrorName(c.code.ErrorName()); !ok || got != c.code {
			t.Errorf("code %d: error name %q", uint16(c.code), c.code.ErrorName())
		}
	}
	if CodeFdsRefused.ErrorName() != "porter.Bus.Error.FdsRefused" {
		t.Error(CodeFdsRefused.ErrorName())
	}
	if !CodeDenied.FatalFor(TypeHello) || CodeDenied.FatalFor(TypeRequestName) || !CodeQuota.FatalFor(TypeHello) {
		t.Error("DENIED and QUOTA are fatal for HELLO only")
	}
	if !CodeRevoked.Local() || CodeInvalid.Local() || Code(25).Known() {
		t.Error("local codes")
	}
	e := FailBody{Code: CodeFDLimit, Errno: uint32(syscall.ETOOMANYREFS), Text: "x"}.Err("send")
	if !errors.Is(e, syscall.ETOOMANYREFS) || errors.Is(e, syscall.EMFILE) {
		t.Errorf("%v: the FAIL's errno wins", e)
	}
}

// TestMarshalChecks checks Rules.Marshal refuses what the receiver would,
// with Op "encode".
func TestMarshalChecks(t *testing.T) {
	r := &Rules{Path: PathChannel}
	if _, err := r.Marshal(frame(nil)); err != nil {
		t.Fatal(err)
	}
	_, err := r.Marshal(frame(func(f *Frame) { f.Body = make([]byte, DefaultMaxFrame) }))
	if !errors.Is(err, &Error{Op: "encode", Code: CodeTooLarge}) || !errors.Is(err, syscall.EMSGSIZE) {
		t.Errorf("oversized: %v", err)
	}
	if _, err := r.Marshal(frame(func(f *Frame) { f.Fields = nil })); !errors.Is(err, &Error{Op: "encode", Code: CodeInvalid}) {
		t.Errorf("no MEMBER: %v", err)
	}
}
