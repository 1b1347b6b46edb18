package ipc

import (
	"bytes"
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzDecodeOffer: any 8 bytes either decode to an offer that encodes
// back to the same bytes, or fail with ErrBadOffer; never a panic.
func FuzzDecodeOffer(f *testing.F) {
	f.Add(EncodeOffer(Offer{Type: unix.SOCK_STREAM, Tag: 7}))
	f.Add(EncodeOffer(Offer{Type: unix.SOCK_SEQPACKET, Tag: 0xffff}))
	f.Add([]byte("PCHN\x02\x01\x00\x00"))
	f.Add([]byte("PCHN\x01\x02\x00\x00"))
	f.Add([]byte("PCH"))
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := DecodeOffer(b)
		if err != nil {
			if !errors.Is(err, ErrBadOffer) {
				t.Fatalf("%q: %v is not ErrBadOffer", b, err)
			}
			return
		}
		if got := EncodeOffer(o); !bytes.Equal(got, b) {
			t.Fatalf("%q decodes to %+v, which encodes to %q", b, o, got)
		}
	})
}
