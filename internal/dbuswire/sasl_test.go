package dbuswire

import (
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"testing"
)

const testGUID = "0123456789abcdef0123456789abcdef"

func hexUID(uid int) string { return hex.EncodeToString([]byte(strconv.Itoa(uid))) }

// feedAll feeds chunks and collects the answers until done or an error.
func feedAll(s *Server, chunks ...string) (out string, done bool, rest string, err error) {
	for _, c := range chunks {
		o, d, r, e := s.Feed([]byte(c))
		out += string(o)
		if e != nil || d {
			return out, d, string(r), e
		}
	}
	return out, false, "", nil
}

func TestSASLDialects(t *testing.T) {
	ok := "OK " + testGUID + "\r\n"
	uid := hexUID(1000)
	for _, tc := range []struct {
		name   string
		in     string
		out    string
		rest   string
		fds    bool
		unixFD bool
	}{
		{"sd-bus", "\x00AUTH EXTERNAL\r\nDATA\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n", "DATA\r\n" + ok + "AGREE_UNIX_FD\r\n", "", true, true},
		{"sd-bus with uid", "\x00AUTH EXTERNAL\r\nDATA " + uid + "\r\nBEGIN\r\nl\x01", "DATA\r\n" + ok, "l\x01", false, true},
		{"libdbus", "\x00AUTH EXTERNAL " + uid + "\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n", ok + "AGREE_UNIX_FD\r\n", "", true, true},
		{"gdbus", "\x00AUTH\r\nAUTH EXTERNAL " + uid + "\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\nl\x01\x00\x01",
			"REJECTED EXTERNAL\r\n" + ok + "AGREE_UNIX_FD\r\n", "l\x01\x00\x01", true, true},
		{"no fds offered", "\x00AUTH EXTERNAL " + uid + "\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n", ok + "ERROR \"fd passing is not supported on this connection\"\r\n", "", false, false},
		{"other mechanism first", "\x00AUTH DBUS_COOKIE_SHA1 " + hex.EncodeToString([]byte("root")) + "\r\nAUTH ANONYMOUS\r\nAUTH EXTERNAL\r\nDATA\r\nBEGIN\r\n",
			"REJECTED EXTERNAL\r\nREJECTED EXTERNAL\r\nDATA\r\n" + ok, "", false, true},
		{"cancel then retry", "\x00AUTH EXTERNAL\r\nCANCEL\r\nAUTH EXTERNAL " + uid + "\r\nBEGIN\r\n", "DATA\r\nREJECTED EXTERNAL\r\n" + ok, "", false, true},
		{"cancel after OK", "\x00AUTH EXTERNAL " + uid + "\r\nNEGOTIATE_UNIX_FD\r\nCANCEL\r\nAUTH EXTERNAL\r\nDATA\r\nBEGIN\r\n",
			ok + "AGREE_UNIX_FD\r\nREJECTED EXTERNAL\r\nDATA\r\n" + ok, "", false, true},
		{"empty initial response", "\x00AUTH EXTERNAL \r\nBEGIN\r\n", ok, "", false, true},
	} {
		// Whole, then one byte per Feed: the answers must not depend on
		// how the bytes arrive.
		for _, split := range []bool{false, true} {
			s := &Server{UID: 1000, GUID: testGUID, UnixFD: tc.unixFD}
			chunks := []string{tc.in}
			if split {
				chunks = strings.Split(tc.in, "")
				// The bytes after BEGIN come in the same Feed as its \n.
				if i := strings.Index(tc.in, "BEGIN\r\n"); i >= 0 {
					chunks = append(strings.Split(tc.in[:i+6], ""), tc.in[i+6:])
				}
			}
			out, done, rest, err := feedAll(s, chunks...)
			if err != nil || !done || out != tc.out || rest != tc.rest || s.UnixFDAgreed() != tc.fds {
				t.Errorf("%s (split %v): out %q done %v rest %q fds %v err %v;\nwant out %q rest %q fds %v",
					tc.name, split, out, done, rest, s.UnixFDAgreed(), err, tc.out, tc.rest, tc.fds)
			}
		}
	}
}

func TestSASLRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		out  string
		err  string // "" : not closed, not done
	}{
		{"other uid", "\x00AUTH EXTERNAL " + hexUID(0) + "\r\nBEGIN\r\n", "REJECTED EXTERNAL\r\n", "BEGIN before"},
		{"other uid in DATA", "\x00AUTH EXTERNAL\r\nDATA " + hexUID(1001) + "\r\n", "DATA\r\nREJECTED EXTERNAL\r\n", ""},
		{"uid with sign", "\x00AUTH EXTERNAL " + hex.EncodeToString([]byte("+1000")) + "\r\n", "REJECTED EXTERNAL\r\n", ""},
		{"uid overflow", "\x00AUTH EXTERNAL " + hex.EncodeToString([]byte("4294968296")) + "\r\n", "REJECTED EXTERNAL\r\n", ""},
		{"bad hex", "\x00AUTH EXTERNAL 3g\r\n", "REJECTED EXTERNAL\r\n", ""},
		{"no NUL", "AUTH EXTERNAL\r\n", "", "NUL"},
		{"BEGIN first", "\x00BEGIN\r\n", "", "BEGIN before"},
		{"BEGIN in DATA", "\x00AUTH EXTERNAL\r\nBEGIN\r\n", "DATA\r\n", "BEGIN before"},
		{"DATA first", "\x00DATA 31\r\n", "ERROR \"unexpected command\"\r\n", ""},
		{"fds before OK", "\x00NEGOTIATE_UNIX_FD\r\n", "ERROR \"unexpected command\"\r\n", ""},
		{"CANCEL first", "\x00CANCEL\r\nERROR\r\n", "ERROR \"unexpected command\"\r\nREJECTED EXTERNAL\r\n", ""},
		{"AUTH while waiting for DATA", "\x00AUTH EXTERNAL\r\nAUTH EXTERNAL\r\n", "DATA\r\nERROR \"unexpected command\"\r\n", ""},
		{"long line", "\x00AUTH EXTERNAL " + strings.Repeat("3", 2000), "", "longer than"},
		{"long line ended", "\x00AUTH EXTERNAL " + strings.Repeat("3", 2000) + "\r\n", "", "longer than"},
		{"bare LF", "\x00AUTH\nAUTH\n", "", ""},
		{"too many failures", "\x00" + strings.Repeat("AUTH\r\n", 9), strings.Repeat("REJECTED EXTERNAL\r\n", 8), "9 failed"},
		{"too many commands", "\x00AUTH EXTERNAL\r\nDATA\r\n" + strings.Repeat("NEGOTIATE_UNIX_FD\r\n", 31), "DATA\r\nOK " + testGUID + "\r\n" + strings.Repeat("AGREE_UNIX_FD\r\n", 30), "more than 32"},
	} {
		s := &Server{UID: 1000, GUID: testGUID, UnixFD: true}
		out, done, _, err := s.Feed([]byte(tc.in))
		if done || string(out) != tc.out || (tc.err == "") != (err == nil) ||
			(err != nil && (!strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrAuth))) {
			t.Errorf("%s: out %q done %v err %v; want out %q, error with %q", tc.name, out, done, err, tc.out, tc.err)
		}
	}
	s := &Server{UID: 1000, GUID: testGUID}
	if _, done, _, err := s.Feed([]byte("\x00AUTH EXTERNAL\r\nDATA\r\nBEGIN\r\n")); !done || err != nil {
		t.Fatalf("auth: done %v err %v", done, err)
	}
	if _, _, _, err := s.Feed([]byte("x")); !errors.Is(err, ErrAuth) {
		t.Errorf("Feed after BEGIN: %v", err)
	}
}
