package fdpass_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/porter-ipc/porter/fdpass"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// TestNewAcceptedConn: a socket accepted on a listener with SO_PASSCRED
// inherits it, so the Conn NewAcceptedConn makes without asking the
// kernel receives the sender's credentials on a plain Send, and none
// once SetPassCred turns them off; without SO_PASSCRED on the listener,
// none come. An unusable type is refused and the socket closed.
func TestNewAcceptedConn(t *testing.T) {
	testutil.CheckLeaks(t)
	want := fdpass.Cred{PID: os.Getpid(), UID: os.Getuid(), GID: os.Getgid()}
	for _, st := range []struct {
		name string
		typ  int
		net  string
	}{{"stream", unix.SOCK_STREAM, "unix"}, {"seqpacket", unix.SOCK_SEQPACKET, "unixpacket"}} {
		for _, pass := range []bool{true, false} {
			path := filepath.Join(t.TempDir(), "s")
			ln, err := net.ListenUnix(st.net, &net.UnixAddr{Name: path, Net: st.net})
			if err != nil {
				t.Fatal(err)
			}
			if pass {
				rc, err := ln.SyscallConn()
				if err != nil {
					t.Fatal(err)
				}
				var serr error
				rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
				if serr != nil {
					t.Fatal(serr)
				}
			}
			cc, err := net.DialUnix(st.net, nil, &net.UnixAddr{Name: path, Net: st.net})
			if err != nil {
				t.Fatal(err)
			}
			client, err := fdpass.NewConn(cc)
			if err != nil {
				t.Fatal(err)
			}
			sc, err := ln.AcceptUnix()
			ln.Close()
			if err != nil {
				t.Fatal(err)
			}
			server, err := fdpass.NewAcceptedConn(sc, st.typ, pass)
			if err != nil {
				t.Fatal(err)
			}
			if server.Type() != st.typ {
				t.Errorf("%s: Type() = %d, want %d", st.name, server.Type(), st.typ)
			}
			_, w := pipes(t, 1)
			if _, err := client.Send([]byte("c"), w...); err != nil {
				t.Fatal(err)
			}
			m, err := server.Recv(make([]byte, 1), 1)
			if err != nil {
				t.Fatalf("%s, passcred %v: %v", st.name, pass, err)
			}
			if len(m.Files) != 1 || (m.Cred == nil) == pass || (pass && *m.Cred != want) {
				t.Fatalf("%s, listener passcred %v: got cred %+v with %d fds, want %v with 1", st.name, pass, m.Cred, len(m.Files), pass)
			}
			m.Close()
			if pass {
				if err := server.SetPassCred(false); err != nil {
					t.Fatal(err)
				}
				if _, err := client.Send([]byte("c")); err != nil {
					t.Fatal(err)
				}
				if m, err := server.Recv(make([]byte, 1), 1); err != nil || m.Cred != nil {
					t.Fatalf("%s: passcred off: cred %+v, %v", st.name, m.Cred, err)
				}
			}
			client.Close()
			server.Close()
		}
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := fdpass.NewAcceptedConn(r, unix.SOCK_DGRAM, false); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("NewAcceptedConn of type SOCK_DGRAM: %v, want EINVAL", err)
	}
	if err := r.Close(); err == nil {
		t.Error("the socket was still open after a failed NewAcceptedConn")
	}
}
