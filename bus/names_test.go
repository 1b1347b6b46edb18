package bus

import (
	"errors"
	"strings"
	"syscall"
	"testing"
)

func TestNames(t *testing.T) {
	long := func(n int) string { return "a." + strings.Repeat("b", n-2) }
	for _, c := range []struct {
		check func(string) error
		ok    []string
		bad   []string
	}{
		{CheckName,
			[]string{"com.example.service1", "a.b", "a-b._c.d-", long(255), "org.freedesktop.DBus"},
			[]string{"", "a", ".a.b", "a.b.", "a..b", ":1.7", "a.1b", "a.b c", "a.é", long(256)}},
		{CheckInterface,
			[]string{"org.example.Foo", "a._b"},
			[]string{"a-b.c", "a", "a.1b", ":a.b"}},
		{CheckMember,
			[]string{"Echo", "_x", "a1", strings.Repeat("m", 255)},
			[]string{"", "1a", "a.b", "a-b", strings.Repeat("m", 256)}},
		{CheckPath,
			[]string{"/", "/a", "/org/example/a_1", "/" + strings.Repeat("p", 1023)},
			[]string{"", "a", "//", "/a/", "/a//b", "/a-b", "/" + strings.Repeat("p", 1024)}},
		{CheckLabel,
			[]string{"", "demo", "héllo", strings.Repeat("l", 64)},
			[]string{"a\x00", "a\n", "a\x7f", "a\u0085", "\xff", strings.Repeat("l", 65)}},
		{CheckMatchArg,
			[]string{"", "hello", strings.Repeat("x", 1024)},
			[]string{"a\x00b", "\xc3", strings.Repeat("x", 1025)}},
	} {
		for _, s := range c.ok {
			if err := c.check(s); err != nil {
				t.Errorf("%q: %v", s, err)
			}
		}
		for _, s := range c.bad {
			if c.check(s) == nil {
				t.Errorf("%q accepted", s)
			}
		}
	}
	for _, s := range []string{"org.freedesktop.DBus", "porter", "porter.Bus"} {
		if !ReservedName(s) {
			t.Errorf("%s is not reserved", s)
		}
	}
	if ReservedName("porterx.a") || ReservedName("org.freedesktop.DBus2") {
		t.Error("reserves too much")
	}
}

func TestAddressText(t *testing.T) {
	for s, want := range map[string]uint64{":1.2": 2, ":1.42": 42, ":1.9223372036854775807": MaxAddress} {
		a, err := ParseAddress(s)
		if err != nil || a != want {
			t.Errorf("%s: %d %v", s, a, err)
		}
		if FormatAddress(a) != s {
			t.Errorf("%d prints as %s", a, FormatAddress(a))
		}
	}
	for _, s := range []string{"", ":1.", ":1.0", ":1.1", ":1.07", ":1.9223372036854775808", ":1.18446744073709551615",
		":1.99999999999999999999", ":2.5", "1.5", ":1.5x", ":1.+5", ":bus"} {
		_, err := ParseAddress(s)
		if !errors.Is(err, syscall.EINVAL) || CodeOf(err) != CodeInvalid {
			t.Errorf("%q: %v", s, err)
		}
	}
	if FormatAddress(AddrBus) != ":bus" || FormatAddress(AddrNone) != "" {
		t.Error("bus or none")
	}
}
