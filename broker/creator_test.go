package broker

import (
	"net/netip"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// newCreator returns the creator the tests use.
//
// TEMPORARY: until package creator lands this binds in-process, the way
// porter-creator does (SO_REUSEADDR, IPV6_V6ONLY on AF_INET6, blocking);
// the sockets are real kernel sockets.
func newCreator(t testing.TB) Creator {
	return CreatorFunc(func(p Proto, a netip.AddrPort) (*os.File, error) {
		typ, fam := unix.SOCK_STREAM, unix.AF_INET
		if p == UDP {
			typ = unix.SOCK_DGRAM
		}
		var sa unix.Sockaddr = &unix.SockaddrInet4{Port: int(a.Port()), Addr: a.Addr().As4()}
		if a.Addr().Is6() {
			fam = unix.AF_INET6
			sa = &unix.SockaddrInet6{Port: int(a.Port()), Addr: a.Addr().As16()}
		}
		fd, err := unix.Socket(fam, typ|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, os.NewSyscallError("socket", err)
		}
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		if fam == unix.AF_INET6 {
			unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
		}
		if err := unix.Bind(fd, sa); err != nil {
			unix.Close(fd)
			return nil, os.NewSyscallError("bind", err)
		}
		return os.NewFile(uintptr(fd), "socket"), nil
	})
}
