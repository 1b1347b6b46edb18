package bus

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func TestStringsLayout(t *testing.T) {
	for _, c := range []struct {
		args []string
		sig  string
		hex  string
	}{
		{nil, "", ""},
		{[]string{""}, "s", "0000000000"},
		{[]string{"hi"}, "s", "020000006869" + "00"},
		// "hi" ends at byte 7: one byte of padding before the next length.
		{[]string{"hi", ""}, "ss", "02000000686900" + "00" + "0000000000"},
		{[]string{"abc", "de"}, "ss", "0300000061626300" + "020000006465" + "00"},
		{[]string{"héllo"}, "s", "0600000068c3a96c6c6f00"},
	} {
		sig, body := Strings(c.args...)
		if sig != c.sig || strconv.Quote(string(body)) != strconv.Quote(string(mustHex(t, c.hex))) {
			t.Errorf("Strings(%q) = %q %x, want %q %s", c.args, sig, body, c.sig, c.hex)
		}
		got, err := ParseStrings(sig, body)
		if err != nil || len(got) != len(c.args) || (len(got) > 0 && !reflect.DeepEqual(got, c.args)) {
			t.Errorf("ParseStrings(Strings(%q)) = %q, %v", c.args, got, err)
		}
	}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b := make([]byte, len(s)/2)
	for i := range b {
		v, err := strconv.ParseUint(s[2*i:2*i+2], 16, 8)
		if err != nil {
			t.Fatal(err)
		}
		b[i] = byte(v)
	}
	return b
}

// stringSeeds are (signature, body) pairs named by what they are, valid
// first: the committed corpus (testdata/fuzz/FuzzParseStrings) and f.Add
// seeds. Every "bad_" one must be refused.
func stringSeeds() map[string]struct {
	sig  string
	body []byte
} {
	type sb = struct {
		sig  string
		body []byte
	}
	ok := func(args ...string) sb { s, b := Strings(args...); return sb{s, b} }
	two := ok("hi", "x")
	seeds := map[string]sb{
		"none":            ok(),
		"empty":           ok(""),
		"one":             ok("hello"),
		"two_padded":      two,
		"utf8":            ok("héllo", "日本"),
		"aligned":         ok("abc", "defg", "h"),
		"bad_sig_i":       {"i", []byte{1, 0, 0, 0}},
		"bad_sig_as":      {"as", two.body},
		"bad_sig_long":    {strings.Repeat("s", 256), nil},
		"bad_short_len":   {"s", []byte{1, 0}},
		"bad_past_end":    {"s", []byte{9, 0, 0, 0, 'a', 0}},
		"bad_huge_len":    {"s", []byte{0xff, 0xff, 0xff, 0xff, 0}},
		"bad_no_nul":      {"s", []byte{1, 0, 0, 0, 'a', 'b'}},
		"bad_inner_nul":   {"s", []byte{3, 0, 0, 0, 'a', 0, 'b', 0}},
		"bad_utf8":        {"s", []byte{2, 0, 0, 0, 0xc3, 0x28, 0}},
		"bad_padding":     {"ss", append(append([]byte{}, two.body[:7]...), append([]byte{1}, two.body[8:]...)...)},
		"bad_no_pad":      {"ss", append(append([]byte{}, two.body[:7]...), two.body[8:]...)},
		"bad_trailing":    {"s", append(ok("a").body, 0)},
		"bad_body_no_sig": {"", []byte{0}},
		"bad_ends_in_pad": {"ss", two.body[:7]},
	}
	return seeds
}

func TestParseStringsRefuses(t *testing.T) {
	for name, s := range stringSeeds() {
		got, err := ParseStrings(s.sig, s.body)
		bad := strings.HasPrefix(name, "bad_")
		if bad != (err != nil) {
			t.Errorf("%s: ParseStrings = %q, %v", name, got, err)
			continue
		}
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Code != CodeInvalid || !errors.Is(err, &Error{Code: CodeInvalid}) {
				t.Errorf("%s: %v is not an *Error with CodeInvalid", name, err)
			}
		}
	}
}

func TestValidStrings(t *testing.T) {
	if err := ValidStrings("a", "héllo", ""); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"a\x00b"}, {"ok", "\xff"}, make([]string, 256)} {
		if err := ValidStrings(args...); CodeOf(err) != CodeInvalid {
			t.Errorf("ValidStrings(%q...) = %v, want INVALID", args[0], err)
		}
		if sig, body := Strings(args...); ValidStrings(args...) != nil {
			if _, err := ParseStrings(sig, body); err == nil {
				t.Errorf("ParseStrings took what ValidStrings refuses: %q", args[0])
			}
		}
	}
}

// FuzzParseStrings: ParseStrings never panics, refuses only with
// CodeInvalid, and what it accepts is exactly what Strings writes for the
// result (padding zero, nothing left over: one body per list of strings).
func FuzzParseStrings(f *testing.F) {
	for _, s := range stringSeeds() {
		f.Add(s.sig, s.body)
	}
	f.Fuzz(func(t *testing.T, sig string, body []byte) {
		got, err := ParseStrings(sig, body)
		if err != nil {
			if CodeOf(err) != CodeInvalid {
				t.Fatalf("error %T %v", err, err)
			}
			return
		}
		if ValidStrings(got...) != nil {
			t.Fatalf("accepted %q, which ValidStrings refuses", got)
		}
		s2, b2 := Strings(got...)
		if s2 != sig || !bytes.Equal(b2, body) {
			t.Fatalf("accepted %q %x, Strings gives %q %x", sig, body, s2, b2)
		}
	})
}

// TestStringsCorpus checks testdata/fuzz/FuzzParseStrings holds every
// named seed; BUS_UPDATE_CORPUS=1 writes them.
func TestStringsCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzParseStrings")
	for name, s := range stringSeeds() {
		want := "go test fuzz v1\nstring(" + strconv.Quote(s.sig) + ")\n[]byte(" + strconv.Quote(string(s.body)) + ")\n"
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
			t.Errorf("%s is missing or stale (BUS_UPDATE_CORPUS=1 go test -run TestStringsCorpus ./bus): %v", path, err)
		}
	}
}
