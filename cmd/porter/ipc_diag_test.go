package main

import (
	"encoding/binary"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// The parts of <linux/unix_diag.h> and <linux/sock_diag.h> that
// backlogLen needs; x/sys/unix does not define them.
const (
	sockDiagByFamily = 20   // SOCK_DIAG_BY_FAMILY
	udiagShowName    = 0x01 // UDIAG_SHOW_NAME
	udiagShowRQLen   = 0x10 // UDIAG_SHOW_RQLEN
	unixDiagName     = 0    // UNIX_DIAG_NAME
	unixDiagRQLen    = 4    // UNIX_DIAG_RQLEN
	tcpListen        = 10   // TCP_LISTEN, the state of a listening socket
)

// backlogLen returns how many connections wait in the accept queue of the
// listening Unix socket bound to path (what `ss -xl` shows as Recv-Q),
// asked of the kernel with sock_diag; -1 when no socket listens there. A
// client counted here has connected and not been accepted.
func backlogLen(t testing.TB, path string) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		t.Fatalf("netlink socket: %v", err)
	}
	defer unix.Close(fd)
	// nlmsghdr, then unix_diag_req: family, protocol, pad, states, ino,
	// show, cookie[2].
	req := make([]byte, 16+24)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], sockDiagByFamily)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	req[16] = unix.AF_UNIX
	binary.NativeEndian.PutUint32(req[20:], 1<<tcpListen)
	binary.NativeEndian.PutUint32(req[28:], udiagShowName|udiagShowRQLen)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		t.Fatalf("sock_diag request: %v", err)
	}
	found := -1
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			t.Fatalf("sock_diag reply: %v", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			t.Fatalf("sock_diag reply: %v", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return found
			case unix.NLMSG_ERROR:
				t.Fatalf("sock_diag: error reply")
			}
			// unix_diag_msg is 16 bytes, then attributes.
			var name string
			rq := -1
			for a := m.Data[min(16, len(m.Data)):]; len(a) >= 4; {
				l, typ := int(binary.NativeEndian.Uint16(a)), binary.NativeEndian.Uint16(a[2:])
				if l < 4 || l > len(a) {
					break
				}
				switch typ {
				case unixDiagName:
					name = strings.TrimRight(string(a[4:l]), "\x00") // bind(2) may count the NUL
				case unixDiagRQLen:
					if l >= 8 {
						rq = int(binary.NativeEndian.Uint32(a[4:]))
					}
				}
				a = a[min((l+3)&^3, len(a)):]
			}
			if name == path {
				found = rq
			}
		}
	}
}
