package broker

import (
	"bytes"
	"net/netip"
	"testing"
)

// reencode builds the bytes of a decoded message again.
func reencode(m *message) []byte {
	switch m.Type {
	case msgRequest:
		b, _ := encodeRequest(&m.Request)
		return b
	case msgPickup, msgRelease, msgDone:
		return encodeToken(m.Type, m.Token)
	case msgReleaseFD, msgList:
		return header(m.Type)
	case msgGrant:
		return encodeGrant(&m.Grant)
	case msgError:
		return encodeError(m.Err.Code, m.Err.Errno, m.Err.Text)
	case msgSocket:
		return encodeSocket(&m.Socket, m.NHolder)
	case msgHolder:
		return encodeHolder(&m.Holder)
	case msgEnd:
		return encodeEnd(m.End.Sockets, m.End.CreatorGone)
	}
	return nil
}

// wellFormedSeeds are messages of every type, built by the encoders:
// each decodes, and encodes back to the same bytes.
func wellFormedSeeds() [][]byte {
	req, _ := encodeRequest(&Request{Proto: TCP, Addr: netip.MustParseAddrPort("0.0.0.0:80"), Share: ShareApp, App: "web"})
	req6, _ := encodeRequest(&Request{Proto: UDP, Addr: netip.MustParseAddrPort("[::1]:53"), Share: ShareAny, Defer: true})
	tok := Token{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	return [][]byte{
		req, req6,
		encodeToken(msgPickup, tok), encodeToken(msgRelease, tok), encodeToken(msgDone, tok),
		header(msgReleaseFD), header(msgList),
		encodeGrant(&grant{Token: tok, Proto: TCP, Addr: netip.MustParseAddrPort("127.0.0.1:8080")}),
		encodeGrant(&grant{Token: tok, Proto: UDP, Addr: netip.MustParseAddrPort("[::]:53")}),
		encodeError(CodeConflict, 98, "held by someone else"),
		encodeSocket(&SocketInfo{Proto: TCP, Addr: netip.MustParseAddrPort("0.0.0.0:80"), Refs: 2, Linger: 1500}, 2),
		encodeHolder(&HolderInfo{PID: 42, UID: 33, GID: 33, State: Held, Share: ShareAny, App: "lighttpd", TokenPrefix: [4]byte{1, 2, 3, 4}}),
		encodeEnd(1, true),
	}
}

// malformedSeeds are packets the decoder refuses: another version, a
// header cut short, nothing at all.
func malformedSeeds() [][]byte {
	return [][]byte{{2, 'L', 0, 0}, {1, 'Q'}, {}}
}

// FuzzDecode feeds arbitrary packets to the decoder, which both sides use:
// it must never panic, must refuse what is longer than MaxMessage, and
// whatever it accepts must encode back to the same bytes (so no two
// packets mean the same thing and nothing is silently ignored).
//
// Run it with a short -fuzzminimizetime (make fuzz uses 5s): minimizing a
// new 2 KiB input otherwise takes the whole run at 0 execs/s.
func FuzzDecode(f *testing.F) {
	for _, b := range append(wellFormedSeeds(), malformedSeeds()...) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decode(b)
		if err != nil {
			if _, ok := err.(*protoError); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			if len(b) > MaxMessage && err.(*protoError).code != CodeTooLarge {
				t.Fatalf("%d-byte message: %v", len(b), err)
			}
			return
		}
		if len(b) > MaxMessage {
			t.Fatalf("accepted a %d-byte message", len(b))
		}
		if again := reencode(m); !bytes.Equal(again, b) {
			t.Fatalf("decode/encode differs:\n in  %x\n out %x", b, again)
		}
	})
}

// TestEncodeDecode checks each well-formed seed round-trips (the fuzz
// property on known-good input) and each malformed one is refused.
func TestEncodeDecode(t *testing.T) {
	for _, b := range wellFormedSeeds() {
		m, err := decode(b)
		if err != nil {
			t.Fatalf("%x: %v", b, err)
		}
		if again := reencode(m); !bytes.Equal(again, b) {
			t.Fatalf("round trip %q:\n in  %x\n out %x", m.Type, b, again)
		}
	}
	for _, b := range malformedSeeds() {
		if m, err := decode(b); err == nil {
			t.Fatalf("%x decoded as %q; it is malformed", b, m.Type)
		}
	}
}

// TestDocExample decodes the REQUEST example of docs/protocol-broker.md.
func TestDocExample(t *testing.T) {
	b := []byte{0x01, 0x51, 0x00, 0x00, 0x54, 0x04, 0x01, 0x00, 0x00, 0x50, 0x00, 0x00, 0x00, 0x00, 0x03, 0x77, 0x65, 0x62}
	m, err := decode(b)
	if err != nil {
		t.Fatal(err)
	}
	want := Request{Proto: TCP, Addr: netip.MustParseAddrPort("0.0.0.0:80"), Share: ShareApp, App: "web"}
	if m.Type != msgRequest || m.Request != want {
		t.Fatalf("got %+v", m.Request)
	}
}
