package main

import (
	"bytes"
	"testing"
)

// reader serves data to decode with fixed-length reads, counting what
// decode consumed.
type reader struct {
	data []byte
	used int
}

func (r *reader) read(b []byte) bool {
	if len(r.data)-r.used < len(b) {
		r.used = len(r.data)
		return false
	}
	copy(b, r.data[r.used:])
	r.used += len(b)
	return true
}

func TestDecode(t *testing.T) {
	cases := []struct {
		in   string
		st   status
		used int
	}{
		{"", eof, 0},
		{"T", terminate, 1},
		{"TT", terminate, 1},
		{"X", invalid, 1},
		{"S", eof, 1},
		{"SX", eof, 2}, // type and family are read together
		{"SX4", invalid, 3},
		{"SU5", invalid, 3},
		{"SU4\x00\x35\x7f\x00\x00", eof, 8},
		{"SU4\x00\x35\x7f\x00\x00\x01", create, 9},
		{"ST6\x01\xbb" + string(make([]byte, 16)), create, 21},
		{"ST6\x01\xbb" + string(make([]byte, 15)), eof, 20},
	}
	for _, c := range cases {
		r := &reader{data: []byte(c.in)}
		req, st := decode(r.read)
		if st != c.st || r.used != c.used {
			t.Errorf("%q: status %d after %d bytes, want %d after %d", c.in, st, r.used, c.st, c.used)
		}
		if st == create && c.in[0] == 'S' {
			if req.typ != c.in[1] || req.family != c.in[2] || req.port != uint16(c.in[3])<<8|uint16(c.in[4]) {
				t.Errorf("%q: decoded %+v", c.in, req)
			}
		}
	}
}

// FuzzDecode checks decode against the specification in
// docs/protocol-creator.md on any input: it never reads past a command,
// and its verdict follows from the first bytes alone.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{"", "T", "X", "SU4\x00\x35\x7f\x00\x00\x01", "ST6\x01\xbb" + string(make([]byte, 16)), "SX", "SU5", "SU4\x00"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := &reader{data: data}
		req, st := decode(r.read)
		want, used := expect(data)
		if st != want || r.used != used {
			t.Fatalf("%q: status %d after %d bytes, want %d after %d", data, st, r.used, want, used)
		}
		if st != create {
			return
		}
		n := 4
		if data[2] == '6' {
			n = 16
		}
		if req.typ != data[1] || req.family != data[2] || req.port != uint16(data[3])<<8|uint16(data[4]) || !bytes.Equal(req.addr[:n], data[5:5+n]) {
			t.Fatalf("%q: decoded %+v", data, req)
		}
	})
}

// expect is the specification, written independently of decode.
func expect(d []byte) (status, int) {
	switch {
	case len(d) == 0:
		return eof, 0
	case d[0] == 'T':
		return terminate, 1
	case d[0] != 'S':
		return invalid, 1
	case len(d) < 3:
		return eof, len(d)
	case d[1] != 'U' && d[1] != 'T', d[2] != '4' && d[2] != '6':
		return invalid, 3
	}
	size := 9
	if d[2] == '6' {
		size = 21
	}
	if len(d) < size {
		return eof, len(d)
	}
	return create, size
}
