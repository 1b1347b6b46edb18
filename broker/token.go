package broker

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
)

// Token names one reference to a cached socket: 128 random bits.
type Token [16]byte

// String returns the token in hex, whole. Print Short to people.
func (t Token) String() string { return hex.EncodeToString(t[:]) }

// Short returns the first 8 hex digits and an ellipsis: enough to tell
// tokens apart in a listing, far too little to use one.
func (t Token) Short() string { return hex.EncodeToString(t[:4]) + "…" }

// ParseToken parses 32 hex digits.
func ParseToken(s string) (Token, error) {
	var t Token
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(t) {
		return t, fmt.Errorf("invalid token %q: want 32 hex digits", s)
	}
	copy(t[:], b)
	return t, nil
}

func newToken() (Token, error) {
	var t Token
	_, err := rand.Read(t[:])
	return t, err
}
