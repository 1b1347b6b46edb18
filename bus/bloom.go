package bus

import (
	"encoding/binary"
	"errors"
	"math/bits"
	"strconv"
	"strings"
)

// Bloom parameters (docs/protocol-bus.md, "The bloom filter").
const (
	DefaultBloomSize = 64 // bytes: m = 512 bits
	DefaultBloomK    = 8  // positions per property
	MinBloomSize     = 8
	MaxBloomSize     = 256
	maxPathPrefixes  = 16
)

// bloomKeyPrefix is the first 15 bytes of every bloom hash key K_j; the
// 16th is j.
const bloomKeyPrefix = "porter-bloom-v1"

// SipHash24 is the reference SipHash-2-4 of Aumasson and Bernstein, with
// a 64-bit output, of msg under the 128-bit key (k0 = key bytes 0–7,
// k1 = bytes 8–15, little-endian).
func SipHash24(key *[16]byte, msg []byte) uint64 {
	k0 := binary.LittleEndian.Uint64(key[:8])
	k1 := binary.LittleEndian.Uint64(key[8:])
	v0 := k0 ^ 0x736f6d6570736575
	v1 := k1 ^ 0x646f72616e646f6d
	v2 := k0 ^ 0x6c7967656e657261
	v3 := k1 ^ 0x7465646279746573
	round := func() {
		v0 += v1
		v1 = bits.RotateLeft64(v1, 13)
		v1 ^= v0
		v0 = bits.RotateLeft64(v0, 32)
		v2 += v3
		v3 = bits.RotateLeft64(v3, 16)
		v3 ^= v2
		v0 += v3
		v3 = bits.RotateLeft64(v3, 21)
		v3 ^= v0
		v2 += v1
		v1 = bits.RotateLeft64(v1, 17)
		v1 ^= v2
		v2 = bits.RotateLeft64(v2, 32)
	}
	n := len(msg)
	for ; len(msg) >= 8; msg = msg[8:] {
		m := binary.LittleEndian.Uint64(msg)
		v3 ^= m
		round()
		round()
		v0 ^= m
	}
	last := uint64(n&0xff) << 56
	for i, c := range msg {
		last |= uint64(c) << (8 * i)
	}
	v3 ^= last
	round()
	round()
	v0 ^= last
	v2 ^= 0xff
	round()
	round()
	round()
	round()
	return v0 ^ v1 ^ v2 ^ v3
}

// Bloom is a bloom filter of a bus: Size bytes, K positions per property.
// Its zero value is not usable; use [DefaultBloom] or [NewBloomParams].
type Bloom struct {
	size int // bytes, a power of two, 8 … 256
	k    int // positions per property, 1 …
}

// DefaultBloom is the bloom of the defaults: 64 bytes, 8 positions.
var DefaultBloom = Bloom{size: DefaultBloomSize, k: DefaultBloomK}

// NewBloomParams checks WELCOME's bloom_size and bloom_k: the size a
// power of two from 8 to 256 bytes, k from 1 to 255.
func NewBloomParams(size, k int) (Bloom, error) {
	if size < MinBloomSize || size > MaxBloomSize || size&(size-1) != 0 {
		return Bloom{}, errors.New("bus: bloom_size " + strconv.Itoa(size) + " is not a power of two from 8 to 256")
	}
	if k < 1 || k > 255 {
		return Bloom{}, errors.New("bus: bloom_k " + strconv.Itoa(k) + " is not 1 to 255")
	}
	return Bloom{size: size, k: k}, nil
}

// Size is the filter's length in bytes.
func (p Bloom) Size() int { return p.size }

// K is the number of positions per property.
func (p Bloom) K() int { return p.k }

// Positions appends to dst the k bit positions of property prop, in the
// order i = 0 … k−1 (repeats included).
func (p Bloom) Positions(dst []int, prop string) []int {
	m := uint64(p.size * 8)
	b := uint(bits.TrailingZeros64(m)) // log2(m)
	s := int(64 / b)                   // positions per hash word
	var key [16]byte
	copy(key[:], bloomKeyPrefix)
	var w uint64
	for i := 0; i < p.k; i++ {
		j, t := i/s, i%s
		if t == 0 {
			key[15] = byte(j)
			w = SipHash24(&key, []byte(prop))
		}
		dst = append(dst, int((w>>(uint(t)*b))&(m-1)))
	}
	return dst
}

// Add sets in filter the bits of property prop. filter must be Size bytes.
func (p Bloom) Add(filter []byte, prop string) {
	var buf [32]int
	for _, pos := range p.Positions(buf[:0], prop) {
		filter[pos/8] |= 1 << (pos % 8)
	}
}

// Of returns the filter of a set of properties (all zero when empty).
func (p Bloom) Of(props []string) []byte {
	f := make([]byte, p.size)
	for _, s := range props {
		p.Add(f, s)
	}
	return f
}

// Contains reports whether every bit of match is set in signal: the
// bloom test of delivery, byte by byte. Blooms of different sizes never
// match.
func Contains(signal, match []byte) bool {
	if len(signal) != len(match) {
		return false
	}
	for i := range match {
		if signal[i]&match[i] != match[i] {
			return false
		}
	}
	return true
}

// Signal is what the bloom of a signal is computed from: its PATH,
// INTERFACE, MEMBER and ARGS.
type Signal struct {
	Path      string // PATH, "" when absent
	Interface string // INTERFACE
	Member    string // MEMBER
	Args      []Arg  // ARGS entries
}

// SignalOf reads a signal's PATH, INTERFACE, MEMBER and ARGS from a
// frame whose fields were checked.
func SignalOf(f *Frame) (Signal, error) {
	s := Signal{Path: f.Text(FieldPath), Interface: f.Text(FieldInterface), Member: f.Text(FieldMember)}
	if v, ok := f.Field(FieldArgs); ok {
		a, err := ParseArgs(v)
		if err != nil {
			return Signal{}, err
		}
		s.Args = a
	}
	return s, nil
}

// Properties lists the signal's properties ("key:value") in the order of
// the protocol's table: path, path-prefix (at most 16), interface,
// member, argN. Empty fields give none.
func (s Signal) Properties() []string {
	var ps []string
	if s.Path != "" {
		ps = append(ps, "path:"+s.Path)
		ps = append(ps, pathPrefixes(s.Path)...)
	}
	if s.Interface != "" {
		ps = append(ps, "interface:"+s.Interface)
	}
	if s.Member != "" {
		ps = append(ps, "member:"+s.Member)
	}
	for _, a := range s.Args {
		ps = append(ps, "arg"+strconv.Itoa(int(a.Index))+":"+a.Value)
	}
	return ps
}

// pathPrefixes: every prefix of path that ends before a '/' or at the
// end, except "/" itself, at most the first 16, as path-prefix properties.
func pathPrefixes(path string) []string {
	var ps []string
	for i := 1; i <= len(path) && len(ps) < maxPathPrefixes; i++ {
		if i == len(path) || path[i] == '/' {
			if i > 1 {
				ps = append(ps, "path-prefix:"+path[:i])
			}
		}
	}
	return ps
}

// SignalBloom is the bloom of a signal's properties with parameters p.
func SignalBloom(p Bloom, s Signal) []byte { return p.Of(s.Properties()) }

// RuleKind is the kind of a match rule (ADD_MATCH).
type RuleKind uint8

// Match rule kinds (docs/protocol-bus.md, "ADD_MATCH").
const (
	RulePath          RuleKind = 1 // PATH = value
	RulePathNamespace RuleKind = 2 // PATH = value or under value + "/"
	RuleInterface     RuleKind = 3 // INTERFACE = value
	RuleMember        RuleKind = 4 // MEMBER = value
	RuleArg           RuleKind = 5 // ARGS entry Index = value
	RuleArgPath       RuleKind = 6 // D-Bus argNpath
	RuleArg0Namespace RuleKind = 7 // ARGS entry 0 = value or under value + "."
	RuleSenderName    RuleKind = 8 // the source owns the name value
)

// Rule is one rule of a match.
type Rule struct {
	Kind  RuleKind // what is compared
	Index uint8    // for RuleArg and RuleArgPath (0–15); 0 otherwise
	Value string   // what it is compared with
}

// Property is the bloom property of the rule, and whether it has one.
func (r Rule) Property() (string, bool) {
	switch r.Kind {
	case RulePath:
		return "path:" + r.Value, true
	case RulePathNamespace:
		if r.Value == "/" || strings.Count(r.Value, "/") > maxPathPrefixes {
			return "", false
		}
		return "path-prefix:" + r.Value, true
	case RuleInterface:
		return "interface:" + r.Value, true
	case RuleMember:
		return "member:" + r.Value, true
	case RuleArg:
		return "arg" + strconv.Itoa(int(r.Index)) + ":" + r.Value, true
	}
	return "", false
}

// MatchBloom is the bloom of a match's rules' properties with parameters p.
func MatchBloom(p Bloom, rules []Rule) []byte {
	f := make([]byte, p.size)
	for _, r := range rules {
		if s, ok := r.Property(); ok {
			p.Add(f, s)
		}
	}
	return f
}
