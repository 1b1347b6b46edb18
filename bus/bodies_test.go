package bus

import (
	"encoding/binary"
	"reflect"
	"testing"
)

// TestWelcomeLayout checks WELCOME's offsets against the doc's table and
// the outline's reads (A at +0, max_frame at +24, bloom_size at +30).
func TestWelcomeLayout(t *testing.T) {
	w := DefaultWelcome()
	w.Address, w.PID, w.UID, w.GID, w.Flags = 0x0102030405060708, 11, 12, 13, WelcomeDirect|WelcomeFDs
	for i := range w.BusID {
		w.BusID[i] = byte(0xa0 + i)
	}
	b := w.Encode()
	le := binary.LittleEndian
	checks := []struct {
		off  int
		got  uint64
		want uint64
	}{
		{0, le.Uint64(b), w.Address}, {8, uint64(b[8]), 0xa0}, {23, uint64(b[23]), 0xaf},
		{24, uint64(le.Uint32(b[24:])), 65536}, {28, uint64(le.Uint16(b[28:])), 16},
		{30, uint64(le.Uint16(b[30:])), 64}, {32, uint64(b[32]), 8}, {33, uint64(b[33]), 16},
		{34, uint64(le.Uint16(b[34:])), 3}, {36, uint64(le.Uint32(b[36:])), 65536 - 64 - 48},
		{40, le.Uint64(b[40:]), 268435456}, {48, uint64(le.Uint32(b[48:])), 11},
		{52, uint64(le.Uint32(b[52:])), 12}, {56, uint64(le.Uint32(b[56:])), 13},
		{60, uint64(le.Uint32(b[60:])), 4096}, {64, uint64(le.Uint32(b[64:])), 16 << 20},
		{68, uint64(le.Uint32(b[68:])), 256}, {72, uint64(le.Uint32(b[72:])), 1 << 20},
		{76, uint64(le.Uint32(b[76:])), 1024}, {80, uint64(le.Uint32(b[80:])), 8 << 20},
		{84, uint64(le.Uint32(b[84:])), 256}, {88, uint64(le.Uint32(b[88:])), 1024},
		{92, uint64(le.Uint16(b[92:])), 256}, {94, uint64(le.Uint16(b[94:])), 16},
		{96, uint64(le.Uint32(b[96:])), 1024}, {100, uint64(le.Uint32(b[100:])), 4096},
	}
	if len(b) != 104 {
		t.Fatalf("%d bytes", len(b))
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("offset %d: %d, want %d", c.off, c.got, c.want)
		}
	}
	g, err := ParseWelcome(append(b, 1, 2, 3)) // a longer body: extra ignored
	if err != nil || g != w {
		t.Fatalf("%+v %v", g, err)
	}
	if _, err := ParseWelcome(b[:103]); CodeOf(err) != CodeMalformed {
		t.Errorf("103 bytes: %v", err)
	}
	for off, v := range map[int][]byte{24: {0, 0, 4, 0}, 28: {253, 0}, 30: {48, 0}, 32: {0}, 34: {16, 0}, 0: make([]byte, 8)} {
		if _, err := ParseWelcome(patch(b, off, v...)); err == nil {
			t.Errorf("offset %d = %x accepted", off, v)
		}
	}
}

// TestBodiesRoundTrip encodes each body and parses it back, and checks a
// body one byte short is MALFORMED.
func TestBodiesRoundTrip(t *testing.T) {
	rules := []Rule{{Kind: RulePathNamespace, Value: "/org"}, {Kind: RuleArg, Index: 3, Value: "x"}, {Kind: RuleArgPath, Index: 3, Value: "/a/"},
		{Kind: RuleSenderName, Value: "a.b"}, {Kind: RuleArg0Namespace, Value: "com"}}
	cases := []struct {
		v     any
		b     []byte
		parse func([]byte) (any, error)
	}{
		{HelloBody{Flags: HelloAcceptFDs | HelloNoDirect, Label: "porter-bus"}, nil, func(b []byte) (any, error) { return ParseHello(b) }},
		{DoneBody{3, 4}, nil, func(b []byte) (any, error) { return ParseDone(b) }},
		{FailBody{Code: CodeQuota, Errno: 122, Text: "max_names 256"}, nil, func(b []byte) (any, error) { return ParseFail(b) }},
		{NameBody{Address: 7, Flags: NameAllowReplacement, Name: "com.example.x"}, nil, func(b []byte) (any, error) { return ParseName(TypeRequestName, b) }},
		{ConnectBody{Source: 7, Destination: 9, Flags: ConnectRouted}, nil, func(b []byte) (any, error) { return ParseConnect(b) }},
		{RevokeBody{Channel: 5, Reason: RevokeMonitor}, nil, func(b []byte) (any, error) { return ParseRevoke(b) }},
		{ResolveBody{Name: "a.b"}, nil, func(b []byte) (any, error) { return ParseResolve(b) }},
	}
	for _, c := range cases {
		b := c.v.(interface{ Encode() []byte }).Encode()
		got, err := c.parse(b)
		if err != nil || !reflect.DeepEqual(got, c.v) {
			t.Errorf("%T: %+v %v", c.v, got, err)
		}
		if _, err := c.parse(b[:len(b)-1]); CodeOf(err) != CodeMalformed {
			t.Errorf("%T one byte short: %v", c.v, err)
		}
	}
	in := IntroduceBody{Channel: 42, Local: 7, Peer: 9, PID: 100, UID: 1000, GID: 1000, Mode: ModeDirect, Role: RoleAcceptor,
		PeerAccepts: PeerAcceptsFDs, Names: []string{"com.example.peer", "a.b"}}
	if got, err := ParseIntroduce(in.Encode(), 1); err != nil || !reflect.DeepEqual(got, in) {
		t.Errorf("INTRODUCE: %+v %v", got, err)
	}
	if _, err := ParseIntroduce(in.Encode(), 0); CodeOf(err) != CodeMalformed {
		t.Errorf("DIRECT INTRODUCE without its fd: %v", err)
	}
	id := IdentityBody{Address: 9, Primary: 7, PID: 1, UID: 2, GID: 3, Flags: IdentityFDs, Label: "demo", Owned: []string{"a.b"}, Queued: []string{"c.d", "e.f"}}
	if got, err := ParseIdentity(id.Encode()); err != nil || !reflect.DeepEqual(got, id) {
		t.Errorf("IDENTITY: %+v %v", got, err)
	}
	m := AddMatchBody{Cookie: 1, Sender: 0, Bloom: MatchBloom(DefaultBloom, rules), Rules: rules}
	if got, err := ParseAddMatch(DefaultBloom, m.Encode()); err != nil || !reflect.DeepEqual(got, m) {
		t.Errorf("ADD_MATCH: %+v %v", got, err)
	}
	// The bloom must be the rules' bloom, and of the bus's size.
	bad := m
	bad.Bloom = make([]byte, 64)
	if _, err := ParseAddMatch(DefaultBloom, bad.Encode()); CodeOf(err) != CodeBadBloom {
		t.Errorf("zero bloom: %v", err)
	}
	bad.Bloom = MatchBloom(DefaultBloom, rules)[:32]
	if _, err := ParseAddMatch(DefaultBloom, bad.Encode()); CodeOf(err) != CodeBadBloom {
		t.Errorf("32-byte bloom: %v", err)
	}
	for name, rs := range map[string][]Rule{
		"kind twice":       {{Kind: RuleMember, Value: "A"}, {Kind: RuleMember, Value: "B"}},
		"arg index twice":  {{Kind: RuleArg, Index: 1, Value: "A"}, {Kind: RuleArg, Index: 1, Value: "B"}},
		"arg index 16":     {{Kind: RuleArg, Index: 16, Value: "A"}},
		"index on member":  {{Kind: RuleMember, Index: 1, Value: "A"}},
		"kind 9":           {{Kind: 9}},
		"bad member":       {{Kind: RuleMember, Value: "a.b"}},
		"arg0ns index 1":   {{Kind: RuleArg0Namespace, Index: 1, Value: "a"}},
		"bad sender name":  {{Kind: RuleSenderName, Value: ":1.7"}},
		"NUL in arg value": {{Kind: RuleArg, Value: "a\x00"}},
	} {
		if err := CheckRules(rs); CodeOf(err) != CodeInvalid {
			t.Errorf("%s: %v", name, err)
		}
	}
	for name, b := range map[string][]byte{
		"HELLO unknown flag":   HelloBody{Flags: 8}.Encode(),
		"HELLO label 65":       HelloBody{Label: string(make([]byte, 65))}.Encode(),
		"CONNECT both":         ConnectBody{Source: 7, Destination: 9, Name: "a.b"}.Encode(),
		"CONNECT neither":      ConnectBody{Source: 7}.Encode(),
		"RELEASE_NAME flags":   NameBody{Address: 7, Flags: 1, Name: "a.b"}.Encode(),
		"REVOKE reason 4":      RevokeBody{Channel: 1, Reason: 4}.Encode(),
		"RESOLVE both":         ResolveBody{Address: 7, Name: "a.b"}.Encode(),
		"REQUEST_NAME address": NameBody{Address: 7, Name: ":1.9"}.Encode(),
	} {
		var err error
		switch name[:4] {
		case "HELL":
			_, err = ParseHello(b)
		case "CONN":
			_, err = ParseConnect(b)
		case "RELE":
			_, err = ParseName(TypeReleaseName, b)
		case "REQU":
			_, err = ParseName(TypeRequestName, b)
		case "REVO":
			_, err = ParseRevoke(b)
		case "RESO":
			_, err = ParseResolve(b)
		}
		if err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}

// TestFieldValues round-trips the fixed-layout fields and ARGS.
func TestFieldValues(t *testing.T) {
	args := []Arg{{0, ArgString, "hello"}, {3, ArgPath, "/a/b"}}
	b, err := EncodeArgs(args)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ParseArgs(b); err != nil || !reflect.DeepEqual(got, args) {
		t.Errorf("ARGS: %+v %v", got, err)
	}
	if _, err := EncodeArgs([]Arg{{2, ArgString, "a"}, {1, ArgString, "b"}}); CodeOf(err) != CodeInvalid {
		t.Errorf("decreasing ARGS: %v", err)
	}
	if m, err := ParseMemfd(Memfd{Size: 1 << 40}.Encode()); err != nil || m.Size != 1<<40 {
		t.Errorf("MEMFD: %v %v", m, err)
	}
	if c, err := ParseSenderCred(SenderCred{1, 2, 3}.Encode()); err != nil || c != (SenderCred{1, 2, 3}) {
		t.Errorf("SENDER_CRED: %v %v", c, err)
	}
	mi := MonitorInfo{From: 7, To: 1, Time: 123456789, NFDs: 3, Flags: MonitorMemfd | MonitorRefused}
	if got, err := ParseMonitor(mi.Encode()); err != nil || got != mi {
		t.Errorf("MONITOR: %+v %v", got, err)
	}
	if _, err := ParseMonitor(patch(mi.Encode(), 26, 4)); CodeOf(err) != CodeMalformed {
		t.Errorf("MONITOR flag bit 2: %v", err)
	}
	sig := Signal{Path: "/a", Interface: "a.b", Member: "C", Args: args}
	f := &Frame{Type: TypeSignal, Serial: 1, Source: 7, Fields: []Field{{FieldPath, []byte("/a")}, {FieldInterface, []byte("a.b")},
		{FieldMember, []byte("C")}, {FieldArgs, b}}}
	if got, err := SignalOf(f); err != nil || !reflect.DeepEqual(got, sig) {
		t.Errorf("SignalOf: %+v %v", got, err)
	}
}
