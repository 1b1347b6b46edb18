package ipc

import (
	"io"
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkServerRoundTrip: request/response round trips through an
// ipc.Server in library mode (a handler echoing 64-byte requests, no
// fork). One op is one round trip.
func BenchmarkServerRoundTrip(b *testing.B) {
	s := &Server{Handler: HandlerFunc(func(c *Conn) { echo64(c) })}
	path := start(b, s)
	c, err := Dial(path)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	pingPong(b, c)
}

// BenchmarkRawPingPong is the limit for BenchmarkServerRoundTrip: the same
// 64-byte request and response over a bare SOCK_STREAM socketpair in Go's
// netpoller, no porter code. (Blocking read(2)/write(2) from goroutines
// measured twice as slow here: the runtime hands the P off around each
// blocking call.)
func BenchmarkRawPingPong(b *testing.B) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		b.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "pair")
		if conns[i], err = net.FileConn(f); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
	defer conns[0].Close()
	done := make(chan struct{})
	go func() { defer close(done); defer conns[1].Close(); echo64(conns[1]) }()
	pingPong(b, conns[0])
	conns[0].Close()
	<-done
}

func echo64(c io.ReadWriter) {
	buf := make([]byte, 64)
	for {
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}

func pingPong(b *testing.B, c io.ReadWriter) {
	buf := make([]byte, 64)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
}
