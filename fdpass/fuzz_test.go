package fdpass

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzParseControl feeds arbitrary control-message buffers to the parser:
// it must never panic (unix.ParseUnixCredentials does on a short message)
// and must find every fd of a well-formed SCM_RIGHTS message before a
// malformed tail.
func FuzzParseControl(f *testing.F) {
	f.Add(unix.UnixRights(3, 4, 5))
	f.Add(unix.UnixCredentials(&unix.Ucred{Pid: 1, Uid: 2, Gid: 3}))
	f.Add(append(unix.UnixCredentials(&unix.Ucred{Pid: 1}), unix.UnixRights(7)...))
	short := unix.UnixCredentials(&unix.Ucred{Pid: 1})
	binary.NativeEndian.PutUint64(short, uint64(unix.SizeofCmsghdr+4)) // a cred cmsg cut short
	f.Add(short[:unix.SizeofCmsghdr+4])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, oob []byte) {
		fds, cred := parseControl(oob)
		_ = cred
		prefix := unix.UnixRights(9, 10)
		fds2, _ := parseControl(append(append([]byte{}, prefix...), oob...))
		if len(fds2) < 2 || fds2[0] != 9 || fds2[1] != 10 {
			t.Fatalf("lost the fds of a good leading message: %v", fds2)
		}
		if len(fds2) != len(fds)+2 && len(fds) > 0 && len(oob)%8 == 0 {
			// The tail is parsed the same after an aligned prefix.
			t.Fatalf("tail parsed differently: %v vs %v", fds, fds2)
		}
	})
}
