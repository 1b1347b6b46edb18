package dbuswire

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// credentials marshals GetConnectionCredentials' answer, a{sv} with
// UnixUserID u and ProcessID u.
func credentials(order byte) []byte {
	e := NewEncoder(order)
	e.Array("{sv}", func() {
		e.DictEntry(func() { e.String("UnixUserID"); e.Variant("u", func() { e.Uint32(1000) }) })
		e.DictEntry(func() { e.String("ProcessID"); e.Variant("u", func() { e.Uint32(42) }) })
	})
	return e.Bytes()
}

func TestEncoderBytes(t *testing.T) {
	// Hand-assembled from the spec: array length, pad to 8, each entry
	// aligned to 8: key string, variant signature "u", pad to 4, value.
	le := "\x30\x00\x00\x00" + "\x00\x00\x00\x00" + // length 48, pad to 8
		"\x0a\x00\x00\x00UnixUserID\x00" + "\x01u\x00" + "\x00\x00" + "\xe8\x03\x00\x00" + // 8..32
		"\x09\x00\x00\x00ProcessID\x00" + "\x01u\x00" + "\x00\x00\x00" + "\x2a\x00\x00\x00" // 32..56
	be := "\x00\x00\x00\x30" + "\x00\x00\x00\x00" +
		"\x00\x00\x00\x0aUnixUserID\x00" + "\x01u\x00" + "\x00\x00" + "\x00\x00\x03\xe8" +
		"\x00\x00\x00\x09ProcessID\x00" + "\x01u\x00" + "\x00\x00\x00" + "\x00\x00\x00\x2a"
	if got := credentials('l'); string(got) != le {
		t.Errorf("little-endian a{sv}:\n got %q\nwant %q", got, le)
	}
	if got := credentials('B'); string(got) != be {
		t.Errorf("big-endian a{sv}:\n got %q\nwant %q", got, be)
	}
	e := NewEncoder('l')
	e.Strings([]string{":1.1", "org.freedesktop.DBus"})
	want := "\x25\x00\x00\x00" + "\x04\x00\x00\x00:1.1\x00" + "\x00\x00\x00" + "\x14\x00\x00\x00org.freedesktop.DBus\x00"
	if string(e.Bytes()) != want {
		t.Errorf("as:\n got %q\nwant %q", e.Bytes(), want)
	}
	e = NewEncoder('l')
	e.Strings(nil)
	if string(e.Bytes()) != "\x00\x00\x00\x00" {
		t.Errorf("empty as: %q", e.Bytes())
	}
}

func TestRoundTrip(t *testing.T) {
	const sig = "ybnqiuxtdsogha{sv}ay(ias)v"
	for _, order := range []byte{'l', 'B'} {
		e := NewEncoder(order)
		e.Byte(7)
		e.Bool(true)
		e.Int16(-2)
		e.Uint16(3)
		e.Int32(-4)
		e.Uint32(5)
		e.Int64(-6)
		e.Uint64(7)
		e.Double(8.5)
		e.String("héllo")
		e.ObjectPath("/a/b")
		e.Signature("a{sv}")
		e.UnixFD(1)
		e.Array("{sv}", func() {
			e.DictEntry(func() { e.String("k"); e.Variant("as", func() { e.Strings([]string{"x", "y"}) }) })
		})
		e.ByteArray([]byte{1, 2, 3})
		e.Struct(func() { e.Int32(9); e.Strings([]string{"z"}) })
		e.Variant("(st)", func() { e.Struct(func() { e.String("v"); e.Uint64(10) }) })
		body := e.Bytes()

		d := NewDecoder(order, sig, body)
		var got []any
		add := func(v any, err error) {
			if err != nil {
				t.Fatalf("%c: value %d: %v", order, len(got), err)
			}
			got = append(got, v)
		}
		add(d.Byte())
		add(d.Bool())
		add(d.Int16())
		add(d.Uint16())
		add(d.Int32())
		add(d.Uint32())
		add(d.Int64())
		add(d.Uint64())
		add(d.Double())
		add(d.String())
		add(d.ObjectPath())
		add(d.Signature())
		add(d.UnixFD())
		add(nil, d.Array(func() error {
			return d.DictEntry(func() error {
				add(d.String())
				return d.Variant(func(s string) error {
					add(s, nil)
					add(d.Strings())
					return nil
				})
			})
		}))
		add(d.ByteArray())
		add(nil, d.Struct(func() error {
			add(d.Int32())
			add(d.Strings())
			return nil
		}))
		add(nil, d.Variant(func(s string) error { add(s, nil); return d.Skip() }))
		if err := d.Done(); err != nil {
			t.Fatalf("%c: Done: %v", order, err)
		}
		want := []any{byte(7), true, int16(-2), uint16(3), int32(-4), uint32(5), int64(-6), uint64(7), 8.5,
			"héllo", "/a/b", "a{sv}", uint32(1), "k", "as", []string{"x", "y"}, nil, []byte{1, 2, 3},
			int32(9), []string{"z"}, nil, "(st)", nil}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%c: got %#v\nwant %#v", order, got, want)
		}
		args, err := StringArgs(order, sig, body, 64)
		wantArgs := []Arg{{9, 's', "héllo"}, {10, 'o', "/a/b"}}
		if err != nil || !reflect.DeepEqual(args, wantArgs) {
			t.Fatalf("%c: StringArgs = %v, %v; want %v", order, args, err, wantArgs)
		}
		if args, err := StringArgs(order, sig, body, 10); err != nil || len(args) != 1 {
			t.Fatalf("%c: StringArgs max 10 = %v, %v", order, args, err)
		}
	}
}

func TestDecoderErrors(t *testing.T) {
	e := NewEncoder('l')
	e.String("x")
	e.Uint32(2)
	body := e.Bytes()
	for _, tc := range []struct {
		name string
		sig  string
		body []byte
		read func(d *Decoder) error
		want string
	}{
		{"type mismatch", "su", body, func(d *Decoder) error { _, err := d.Uint32(); return err }, "want 'u'"},
		{"past the end", "s", body, func(d *Decoder) error { d.String(); _, err := d.String(); return err }, "no more values"},
		{"unread", "su", body, func(d *Decoder) error { d.String(); return d.Done() }, "left unread"},
		{"trailing bytes", "s", body, func(d *Decoder) error { d.String(); return d.Done() }, "bytes after"},
		{"bad signature", "a", body, func(d *Decoder) error { return d.Err() }, "signature"},
		{"bool 2", "sb", body, func(d *Decoder) error { d.String(); _, err := d.Bool(); return err }, "boolean value 2"},
		{"truncated string", "s", body[:5], func(d *Decoder) error { _, err := d.String(); return err }, "truncated"},
		{"bad path", "o", body, func(d *Decoder) error { _, err := d.ObjectPath(); return err }, "object path"},
		{"sticky", "su", body, func(d *Decoder) error { d.Uint32(); _, err := d.String(); return err }, "want 'u'"},
		{"array unread", "as", []byte("\x08\x00\x00\x00\x01\x00\x00\x00a\x00\x00\x00"), func(d *Decoder) error {
			return d.Array(func() error { return nil })
		}, "left unread"},
		{"array overrun", "as", []byte("\x04\x00\x00\x00\x02\x00\x00\x00ab\x00"), func(d *Decoder) error {
			_, err := d.Strings()
			return err
		}, "overrun"},
	} {
		err := tc.read(NewDecoder('l', tc.sig, tc.body))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v; want an ErrInvalid saying %q", tc.name, err, tc.want)
		}
	}
}

func TestStringArgs(t *testing.T) {
	// A signal body of signature "a{sv}sv(so)o" hand-marshalled: the
	// string-like arguments are 1 and 4; 2 is a variant holding a string,
	// 3 a struct holding one, and neither counts.
	e := NewEncoder('B')
	e.Array("{sv}", func() {
		e.DictEntry(func() { e.String("k"); e.Variant("s", func() { e.String("no") }) })
	})
	e.String("arg1")
	e.Variant("s", func() { e.String("no") })
	e.Struct(func() { e.String("no"); e.ObjectPath("/no") })
	e.ObjectPath("/arg/4")
	args, err := StringArgs('B', "a{sv}sv(so)o", e.Bytes(), 64)
	want := []Arg{{1, 's', "arg1"}, {4, 'o', "/arg/4"}}
	if err != nil || !reflect.DeepEqual(args, want) {
		t.Fatalf("StringArgs = %v, %v; want %v", args, err, want)
	}
	if _, err := StringArgs('l', "a{sv}sv(so)o", e.Bytes(), 64); err == nil {
		t.Errorf("StringArgs in the wrong byte order: no error")
	}
	if _, err := StringArgs('l', "s", []byte("\x02\x00\x00\x00a\x00\x00"), 64); err == nil {
		t.Errorf("StringArgs of a string with a NUL: no error")
	}
	if _, err := StringArgs('l', "(s", nil, 64); err == nil {
		t.Errorf("StringArgs of a bad signature: no error")
	}
	// A variant nested beyond the limit is rejected, not followed.
	deep := []byte{}
	for i := 0; i < 70; i++ {
		deep = append(deep, 1, 'v', 0)
	}
	deep = append(deep, 1, 'y', 0, 1)
	if _, err := StringArgs('l', "v", deep, 64); err == nil || !strings.Contains(err.Error(), "nested") {
		t.Errorf("StringArgs of 70 nested variants: %v", err)
	}
	if !bytes.Equal(credentials('l'), credentials('l')) {
		t.Fatal("encoder not deterministic")
	}
}
