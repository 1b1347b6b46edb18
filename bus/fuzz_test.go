package bus

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// namedSeeds are frames named by what they are, well-formed first: they
// are the committed corpus (testdata/fuzz/FuzzDecode) and f.Add seeds.
func namedSeeds(t testing.TB) map[string][]byte {
	seeds := map[string][]byte{}
	for name, b := range docOutline(t) {
		seeds["doc_"+name] = b
	}
	ctl := func(typ Type, src, dst uint64, body []byte) []byte {
		return enc(&Frame{Type: typ, Serial: 3, ReplySerial: 2, Source: src, Destination: dst, Body: body})
	}
	w := DefaultWelcome()
	w.Address, w.PID, w.UID, w.GID = 7, 42, 1000, 1000
	seeds["welcome"] = ctl(TypeWelcome, 1, 7, w.Encode())
	seeds["done"] = ctl(TypeDone, 1, 7, DoneBody{1, 0}.Encode())
	seeds["fail"] = ctl(TypeFail, 1, 7, FailBody{Code: CodeDenied, Errno: 13, Text: "not yours"}.Encode())
	seeds["introduce_routed"] = ctl(TypeIntroduce, 1, 7, IntroduceBody{Local: 7, Peer: 9, PID: 1, Mode: ModeRouted, Role: RoleInitiator, RoutedReason: RoutedAsked, Names: []string{"a.b"}}.Encode())
	seeds["identity"] = ctl(TypeIdentity, 1, 7, IdentityBody{Address: 9, Primary: 9, Label: "x", Owned: []string{"a.b"}, Queued: []string{"c.d"}}.Encode())
	seeds["revoke"] = ctl(TypeRevoke, 1, 7, RevokeBody{Channel: 4, Reason: RevokePolicy}.Encode())
	seeds["bye"] = ctl(TypeBye, 7, 1, nil)
	seeds["signal_multicast"] = enc(&Frame{Type: TypeSignal, Serial: 9, Source: 7, Fields: []Field{
		{FieldPath, []byte("/org/example/a")}, {FieldInterface, []byte("org.example.Foo")}, {FieldMember, []byte("Changed")},
		{FieldArgs, []byte("\x00\x01\x05\x00hello")},
		{FieldBloom, SignalBloom(DefaultBloom, Signal{Path: "/org/example/a", Interface: "org.example.Foo", Member: "Changed",
			Args: []Arg{{0, ArgString, "hello"}}})}}})
	seeds["error_routed_cred"] = enc(&Frame{Type: TypeError, Serial: 6, ReplySerial: 5, Source: 9, Destination: 7, Fields: []Field{
		{FieldErrorName, []byte("porter.Bus.Error.NameMoved")}, {FieldSenderCred, SenderCred{1, 2, 3}.Encode()}}, Body: []byte("moved")})
	seeds["call_memfd_unknown_field"] = enc(&Frame{Type: TypeCall, Flags: FlagNoReplyExpected, NFDs: 2, Serial: 1, Destination: 9, Source: 7,
		Fields: []Field{{FieldMember, []byte("Put")}, {FieldMemfd, Memfd{Size: 1 << 24}.Encode()}, {0x0042, []byte("ignored")}, {0x0101, []byte("dbus")}}})
	noc, _ := NameOwnerChanged(DefaultBloom, 5, "com.example.peer", 7, 0)
	seeds["bus_name_owner_changed"] = enc(noc)
	gone, _ := EndpointGone(DefaultBloom, 6, 9, 7, GoneLeft)
	seeds["bus_endpoint_gone_unicast"] = enc(gone)
	seeds["end"] = enc(&Frame{Type: TypeEnd, Serial: 8, Source: 7, Destination: 9})

	call := seeds["doc_call"]
	seeds["bad_empty"] = []byte{}
	seeds["bad_short_header"] = call[:47]
	seeds["bad_version_2"] = patch(call, 0, 2)
	seeds["bad_type_0x05"] = patch(call, 1, 5)
	seeds["bad_flag_bit_8"] = patch(call, 3, 1)
	seeds["bad_reserved_header"] = patch(call, 14, 1)
	seeds["bad_fields_len_odd"] = patch(call, 4, 0x1c)
	seeds["bad_body_len"] = patch(call, 8, 9)
	seeds["bad_field_past_end"] = patch(call, 50, 0xff)
	seeds["bad_padding"] = patch(call, 76, 1)
	seeds["bad_duplicate_field"] = patch(call, 56, 4, 0, 4, 0, 'E', 'c', 'h', 'o')
	seeds["bad_critical_field"] = patch(call, 48, 0x04, 0x80)
	seeds["bad_serial_0"] = patch(call, 16, 0)
	seeds["bad_nfds_17"] = patch(call, 12, 17)
	seeds["bad_member_syntax"] = patch(call, 52, '1')
	seeds["bad_hello_fds"] = patch(seeds["doc_hello"], 12, 1)
	return seeds
}

// FuzzDecode feeds arbitrary packets to the decoder, on every path: it
// must never panic, its errors are always *Error with a known code, what
// is longer than the path's limit is refused as TOO_LARGE, and whatever it
// accepts encodes back to the same bytes (no two packets mean the same
// frame, and no unknown field is silently lost). The control-body parsers
// run on every accepted frame's body and must not panic either.
//
// Run it with a short -fuzzminimizetime (5s), as broker.FuzzDecode.
func FuzzDecode(f *testing.F) {
	for _, b := range namedSeeds(f) {
		f.Add(b)
	}
	rules := []Rules{
		{},
		{Path: PathToMaster},
		{Path: PathToMaster, Joined: true},
		{Path: PathFromMaster, Joined: true},
		{Path: PathFromMaster, Joined: true, Monitor: true},
		{Path: PathChannel},
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, r := range rules {
			fr, err := r.Decode(b, -1)
			if err != nil {
				e, ok := err.(*Error)
				if !ok || !e.Code.Known() {
					t.Fatalf("%+v: error %T %v", r, err, err)
				}
				limit := DefaultMaxFrame
				if r.fromEndpoint() {
					limit -= MasterRoom
				}
				if len(b) > limit && e.Code != CodeTooLarge {
					t.Fatalf("%d-byte frame: %v", len(b), err)
				}
				continue
			}
			again, err := fr.MarshalBinary()
			if err != nil {
				t.Fatalf("%+v: accepted, but encoding fails: %v", r, err)
			}
			if !bytes.Equal(again, b) {
				t.Fatalf("%+v: decode/encode differs:\n in  %x\n out %x", r, b, again)
			}
			parseBody(fr)
		}
	})
}

// parseBody runs the parser of the frame's control body, if it has one,
// and re-encodes what parses: the result must parse to the same value.
func parseBody(f *Frame) {
	b := f.Body
	switch f.Type {
	case TypeHello:
		if h, err := ParseHello(b); err == nil {
			mustEqual(ParseHello(h.Encode()))(h)
		}
	case TypeWelcome:
		if w, err := ParseWelcome(b); err == nil {
			mustEqual(ParseWelcome(w.Encode()))(w)
		}
	case TypeDone:
		_, _ = ParseDone(b)
	case TypeFail:
		if x, err := ParseFail(b); err == nil {
			mustEqual(ParseFail(x.Encode()))(x)
		}
	case TypeRequestName, TypeReleaseName:
		if x, err := ParseName(f.Type, b); err == nil {
			mustEqual(ParseName(f.Type, x.Encode()))(x)
		}
	case TypeConnect:
		if x, err := ParseConnect(b); err == nil {
			mustEqual(ParseConnect(x.Encode()))(x)
		}
	case TypeIntroduce:
		if x, err := ParseIntroduce(b, f.NFDs); err == nil {
			y, err := ParseIntroduce(x.Encode(), f.NFDs)
			if err != nil || y.Channel != x.Channel || len(y.Names) != len(x.Names) {
				panic("INTRODUCE does not round-trip")
			}
		}
	case TypeRevoke:
		_, _ = ParseRevoke(b)
	case TypeAddMatch:
		if x, err := ParseAddMatch(DefaultBloom, b); err == nil {
			if _, err := ParseAddMatch(DefaultBloom, x.Encode()); err != nil {
				panic("ADD_MATCH does not round-trip: " + err.Error())
			}
		}
	case TypeResolve:
		if x, err := ParseResolve(b); err == nil {
			mustEqual(ParseResolve(x.Encode()))(x)
		}
	case TypeIdentity:
		if x, err := ParseIdentity(b); err == nil {
			if _, err := ParseIdentity(x.Encode()); err != nil {
				panic("IDENTITY does not round-trip: " + err.Error())
			}
		}
	case TypeRemoveAddress, TypeDisconnect, TypeRemoveMatch:
		_, _ = ParseU64(f.Type, b)
	case TypeListEnd, TypeBecomeMonitor:
		_, _ = ParseU32(f.Type, b)
	}
}

// mustEqual panics unless the re-parse succeeded with the same value.
func mustEqual[T comparable](got T, err error) func(T) {
	return func(want T) {
		if err != nil || got != want {
			panic("control body does not round-trip")
		}
	}
}

// TestSeeds checks each well-formed seed decodes on some path and
// round-trips, and each bad_ one is refused everywhere.
func TestSeeds(t *testing.T) {
	rules := []Rules{{}, {Path: PathToMaster}, {Path: PathToMaster, Joined: true}, {Path: PathFromMaster, Joined: true}, {Path: PathChannel}}
	for name, b := range namedSeeds(t) {
		ok := false
		for _, r := range rules {
			if f, err := r.Decode(b, -1); err == nil {
				ok = true
				if again, _ := f.MarshalBinary(); !bytes.Equal(again, b) {
					t.Errorf("%s: round trip differs", name)
				}
				parseBody(f)
			}
		}
		if bad := len(name) > 4 && name[:4] == "bad_"; ok == bad {
			t.Errorf("%s: accepted on some path = %v", name, ok)
		}
	}
}

// TestCorpus checks testdata/fuzz/FuzzDecode holds every named seed, in
// the fuzzer's file format; BUS_UPDATE_CORPUS=1 writes them.
func TestCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	for name, b := range namedSeeds(t) {
		want := "go test fuzz v1\n[]byte(" + strconv.Quote(string(b)) + ")\n"
		path := filepath.Join(dir, name)
		if os.Getenv("BUS_UPDATE_CORPUS") == "1" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != want {
			t.Errorf("%s is missing or stale (BUS_UPDATE_CORPUS=1 go test -run TestCorpus ./bus): %v", path, err)
		}
	}
}
