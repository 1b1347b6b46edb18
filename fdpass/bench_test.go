package fdpass_test

import (
	"encoding/binary"
	"os"
	"testing"
	"time"

	"github.com/porter-ipc/porter/fdpass"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// BenchmarkRawFDRoundTrip is the physical limit of this machine for the
// whole of porter: one fd sent over a SOCK_SEQPACKET socketpair with raw
// blocking sendmsg/recvmsg, received, closed, and sent back the same way.
// One op is one round trip (two messages, two fds installed and closed).
func BenchmarkRawFDRoundTrip(b *testing.B) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fds[0])
	pr, pw, _ := os.Pipe()
	defer pr.Close()
	defer pw.Close()
	var pfd int
	rc, _ := pw.SyscallConn()
	rc.Control(func(fd uintptr) { pfd = int(fd) })
	rights := unix.UnixRights(pfd)
	done := make(chan struct{})
	go func() { // the echo side
		defer close(done)
		defer unix.Close(fds[1])
		buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
		for {
			_, oobn, _, _, err := unix.Recvmsg(fds[1], buf, oob, unix.MSG_CMSG_CLOEXEC)
			if err != nil || oobn == 0 {
				return
			}
			fd := int(int32(binary.NativeEndian.Uint32(oob[unix.SizeofCmsghdr:])))
			err = unix.Sendmsg(fds[1], buf, unix.UnixRights(fd), nil, 0)
			unix.Close(fd)
			if err != nil {
				return
			}
		}
	}()
	buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if err := unix.Sendmsg(fds[0], buf, rights, nil, 0); err != nil {
			b.Fatal(err)
		}
		_, oobn, _, _, err := unix.Recvmsg(fds[0], buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err != nil || oobn == 0 {
			b.Fatal(err)
		}
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		got, _ := unix.ParseUnixRights(&msgs[0])
		lat = append(lat, time.Since(t0))
		unix.Close(got[0])
	}
	b.StopTimer()
	testutil.ReportLatency(b, lat)
	unix.Shutdown(fds[0], unix.SHUT_RDWR)
	<-done
}

// BenchmarkFDPassRoundTrip is the same round trip through fdpass.Conn on
// non-blocking sockets in Go's netpoller: the cost of the foundation
// against BenchmarkRawFDRoundTrip.
func BenchmarkFDPassRoundTrip(b *testing.B) {
	a, e, err := fdpass.Socketpair(unix.SOCK_SEQPACKET)
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	pr, pw, _ := os.Pipe()
	defer pr.Close()
	defer pw.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer e.Close()
		buf := make([]byte, 1)
		for {
			m, err := e.Recv(buf, 1)
			if err != nil || len(m.Files) != 1 {
				return
			}
			_, err = e.Send(buf, m.Files[0])
			m.Close()
			if err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 1)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := a.Send(buf, pw); err != nil {
			b.Fatal(err)
		}
		m, err := a.Recv(buf, 1)
		if err != nil || len(m.Files) != 1 {
			b.Fatal(err)
		}
		m.Close()
	}
	b.StopTimer()
	a.Close()
	<-done
}
