package fdpass_test

import (
	"fmt"
	"io"
	"os"

	"github.com/porter-ipc/porter/fdpass"
	"golang.org/x/sys/unix"
)

// A pipe's write end travels over a socketpair; what is written through
// the received copy comes out of the pipe.
func Example() {
	a, b, err := fdpass.Socketpair(unix.SOCK_SEQPACKET)
	if err != nil {
		panic(err)
	}
	defer a.Close()
	defer b.Close()

	r, w, _ := os.Pipe()
	defer r.Close()
	if _, err := a.Send([]byte("pipe"), w); err != nil { // borrows w
		panic(err)
	}
	w.Close()

	buf := make([]byte, 16)
	m, err := b.Recv(buf, 1) // gives: m.Files are ours
	if err != nil {
		panic(err)
	}
	defer m.Close()
	fmt.Fprint(m.Files[0], "hello through a passed fd")
	m.Close() // the last write end: the reader sees EOF

	got, _ := io.ReadAll(r)
	fmt.Printf("%s: %s\n", buf[:m.N], got)
	// Output: pipe: hello through a passed fd
}

// The kernel vouches for who is at the other end.
func ExampleConn_PeerCred() {
	a, b, _ := fdpass.Socketpair(unix.SOCK_STREAM)
	defer a.Close()
	defer b.Close()
	cred, err := b.PeerCred()
	if err != nil {
		panic(err)
	}
	fmt.Println(cred.PID == os.Getpid(), cred.UID == os.Getuid())
	// Output: true true
}
