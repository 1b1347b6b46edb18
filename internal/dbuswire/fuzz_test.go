package dbuswire

import (
	"bytes"
	"encoding/hex"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// FuzzSASL feeds any bytes to a Server, whole and then line by line: no
// panic, the same answers both ways, bounded output, and OK only to a
// claim of the peer's own uid (or of no uid).
func FuzzSASL(f *testing.F) {
	uid := hexUID(1000)
	for _, s := range []string{
		"\x00AUTH EXTERNAL\r\nDATA\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n",
		"\x00AUTH EXTERNAL " + uid + "\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\nl\x01\x00\x01",
		"\x00AUTH\r\nAUTH EXTERNAL " + uid + "\r\nBEGIN\r\n",
		"\x00AUTH EXTERNAL " + hexUID(0) + "\r\nAUTH EXTERNAL\r\nDATA " + hexUID(1000) + "\r\nCANCEL\r\nBEGIN\r\n",
		"\x00AUTH EXTERNAL 3030303130303030\r\nBEGIN\r\n",
	} {
		f.Add([]byte(s))
	}
	const maxOut = maxAuthCommands * 64
	f.Fuzz(func(t *testing.T, in []byte) {
		whole := &Server{UID: 1000, GUID: testGUID, UnixFD: true}
		out, done, rest, err := whole.Feed(in)
		if len(out) > maxOut {
			t.Fatalf("%d bytes of answers", len(out))
		}
		// Line by line, checking each OK against the line it answers.
		s := &Server{UID: 1000, GUID: testGUID, UnixFD: true}
		var out2 []byte
		var done2 bool
		var rest2 []byte
		var err2 error
		for data := in; len(data) > 0 && err2 == nil && !done2; {
			n := bytes.Index(data, []byte("\r\n")) + 2
			if n < 2 {
				n = len(data)
			}
			line := data[:n]
			data = data[n:]
			var o, r []byte
			o, done2, r, err2 = s.Feed(line)
			if done2 {
				rest2 = append(r, data...)
			}
			if bytes.HasPrefix(o, []byte("OK ")) && !claimsUID(line, 1000) {
				t.Fatalf("OK to %q", line)
			}
			out2 = append(out2, o...)
		}
		if !bytes.Equal(out, out2) || done != done2 || !bytes.Equal(rest, rest2) || (err == nil) != (err2 == nil) {
			t.Fatalf("whole: %q %v %q %v; line by line: %q %v %q %v", out, done, rest, err, out2, done2, rest2, err2)
		}
	})
}

// claimsUID reports whether line is an AUTH EXTERNAL or DATA line that
// claims uid or claims none.
func claimsUID(line []byte, uid uint32) bool {
	l := strings.TrimPrefix(strings.TrimSuffix(string(line), "\r\n"), "\x00")
	var resp string
	switch {
	case l == "AUTH EXTERNAL" || l == "DATA":
		return true
	case strings.HasPrefix(l, "AUTH EXTERNAL "):
		resp = l[len("AUTH EXTERNAL "):]
	case strings.HasPrefix(l, "DATA "):
		resp = l[len("DATA "):]
	default:
		return false
	}
	if resp == "" {
		return true
	}
	id, err := hex.DecodeString(resp)
	if err != nil || len(id) == 0 {
		return false
	}
	for _, c := range id {
		if c < '0' || c > '9' {
			return false
		}
	}
	n, err := strconv.ParseUint(string(id), 10, 32)
	return err == nil && uint32(n) == uid
}

// FuzzParseMessage: whatever parses appends and parses again to the same
// header and body, and its body's string arguments can be looked for.
func FuzzParseMessage(f *testing.F) {
	f.Add(helloLE)
	f.Add(helloBE)
	f.Add(reply('l'))
	f.Add(reply('B'))
	f.Add(withField(42, "a{sv}", []byte("\x00\x00\x00\x00\x00\x00\x00\x00")))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, body, err := ParseMessage(b)
		if n, lerr := MessageLen(b); err == nil && (lerr != nil || n != len(b)) {
			t.Fatalf("parsed, but MessageLen = %d, %v", n, lerr)
		}
		if err != nil {
			return
		}
		out := AppendMessage(nil, &h, body)
		h2, body2, err := ParseMessage(out)
		if err != nil {
			t.Fatalf("appended message does not parse: %v\n%q", err, out)
		}
		if h2 != h || !bytes.Equal(body, body2) {
			t.Fatalf("round trip: %+v %q; want %+v %q", h2, body2, h, body)
		}
		StringArgs(h.Order, h.Signature, body, maxArgs)
	})
}

// FuzzParseRule: whatever parses has a canonical text that parses to the
// same rule, and matching with it does not panic.
func FuzzParseRule(f *testing.F) {
	for _, s := range []string{
		"type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='com.example'",
		`arg0='\',arg1=\',arg4='a'\''b',arg5=''`,
		"arg63path='/a/',path_namespace='/org',destination=':1.5',eavesdrop='true'",
		"eavesdrop=true,arg0namespace=org.gnome",
	} {
		f.Add(s)
	}
	h := &Header{Type: TypeSignal, Path: "/org/example/Obj", Interface: "org.example.I", Member: "Changed"}
	args := []Arg{{0, 's', "org.example.Svc.Sub"}, {1, 'o', "/org/example/"}}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRule(s)
		if err != nil {
			return
		}
		again, err := parseRule(r.String())
		if err != nil || !reflect.DeepEqual(again, r) {
			t.Fatalf("%q → %q → %+v, %v; want %+v", s, r.String(), again, err, r)
		}
		r.Match(h, []string{":1.1"}, args)
	})
}

// FuzzStringArgs: any signature and body, either byte order: no panic,
// and the same arguments as reading the body with a Decoder.
func FuzzStringArgs(f *testing.F) {
	e := NewEncoder('l')
	e.Array("{sv}", func() { e.DictEntry(func() { e.String("k"); e.Variant("s", func() { e.String("v") }) }) })
	e.String("arg1")
	e.Variant("(so)", func() { e.Struct(func() { e.String("no"); e.ObjectPath("/no") }) })
	e.ObjectPath("/arg/3")
	f.Add(false, "a{sv}svo", e.Bytes())
	f.Add(true, "s", []byte("\x00\x00\x00\x01a\x00"))
	f.Add(false, "aay", []byte("\x08\x00\x00\x00\x01\x00\x00\x00a"))
	f.Fuzz(func(t *testing.T, big bool, sig string, body []byte) {
		order := byte('l')
		if big {
			order = 'B'
		}
		args, err := StringArgs(order, sig, body, maxArgs)
		d := NewDecoder(order, sig, body)
		var want []Arg
		for i := 0; i < maxArgs && d.Err() == nil && d.pos < len(d.sig); i++ {
			switch sig[d.pos] {
			case 's':
				v, err := d.String()
				if err == nil {
					want = append(want, Arg{i, 's', v})
				}
			case 'o':
				v, err := d.ObjectPath()
				if err == nil {
					want = append(want, Arg{i, 'o', v})
				}
			default:
				d.Skip()
			}
		}
		if (err == nil) != (d.Err() == nil) || !reflect.DeepEqual(args, want) {
			t.Fatalf("StringArgs = %v, %v; Decoder: %v, %v", args, err, want, d.Err())
		}
	})
}
