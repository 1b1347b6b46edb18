package access

import (
	"errors"
	"testing"
)

// FuzzDecodeRule feeds arbitrary rule values to the decoder: it must not
// panic, and what it accepts as Allow must encode back to the same bytes.
func FuzzDecodeRule(f *testing.F) {
	f.Add([]byte("D"))
	f.Add([]byte("A\x00\x00\x00\x00"))
	f.Add([]byte("A\x00\x0cFOO=bar\x00BAZ\x00\x00\x04exec"))
	f.Add([]byte("A\x00\x03a=b\x00\x00"))
	f.Add([]byte("X"))
	f.Fuzz(func(t *testing.T, v []byte) {
		r, err := DecodeRule(v)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error not ErrMalformed: %v", err)
			}
			return
		}
		if r.Verdict != Allow {
			return
		}
		var env []byte
		for _, c := range r.Env {
			env = append(env, c.Name...)
			if !c.Unset {
				env = append(env, '=')
				env = append(env, c.Value...)
			}
			env = append(env, 0)
		}
		enc := append([]byte{'A', byte(len(env) >> 8), byte(len(env))}, env...)
		enc = append(enc, byte(len(r.Exec)>>8), byte(len(r.Exec)))
		enc = append(enc, r.Exec...)
		if string(enc) != string(v) {
			t.Fatalf("re-encoded %q, decoded from %q", enc, v)
		}
	})
}

// FuzzCDBLookup feeds arbitrary files to the CDB reader with the keys a
// server looks up: errors are fine, panics and hangs are not.
func FuzzCDBLookup(f *testing.F) {
	f.Add(makeCDB([]string{"uid/0", "uid/default"}, map[string][]byte{"uid/0": []byte("A\x00\x06FOO=1\x00\x00\x00"), "uid/default": []byte("D")}), 0, 0)
	f.Add(make([]byte, 2048), 1, 1)
	f.Add(makeCDB(nil, nil), 65534, 65534)
	f.Fuzz(func(t *testing.T, data []byte, uid, gid int) {
		c, err := ParseCDB("fuzz", data)
		if err != nil {
			return
		}
		r, err := CheckAs(c, uid, gid, 0, 0)
		if err == nil && r.Verdict == NoMatch && r.Key != "" {
			t.Fatalf("no match but key %q", r.Key)
		}
	})
}
