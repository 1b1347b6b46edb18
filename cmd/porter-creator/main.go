// Command porter-creator is porter's privileged helper: it creates and binds
// IPv4/IPv6 UDP/TCP sockets on request and passes them back with
// SCM_RIGHTS. It speaks BIND10's b10-sockcreator protocol byte for byte on
// its stdin/stdout, which must be a Unix socket; docs/protocol-creator.md
// is the specification.
//
// This is the only porter code that runs with privilege, so it is kept
// small enough to audit in one sitting: the standard library's runtime and
// golang.org/x/sys/unix only (no fmt, no reflection), fixed-length reads,
// one request at a time.
//
// Before it reads the first request it locks itself down for good
// (internal/lockdown): no new privileges, CAP_NET_BIND_SERVICE alone, no
// file system (Landlock), and a seccomp allow-list that kills it on any
// other system call. It refuses to serve when that fails.
package main

import (
	"os"
	"unsafe"

	"github.com/porter-ipc/porter/internal/lockdown"
	"golang.org/x/sys/unix"
)

const (
	in  = 0 // stdin: requests
	out = 1 // stdout: answers and sockets
)

// Exit statuses, as BIND10's creator.
const (
	exitOK       = 0 // after 'T'
	exitRead     = 1 // end of input, or stdio not a Unix socket
	exitWrite    = 2 // writing an answer failed
	exitProtocol = 3 // invalid input, after "FI"
	exitInternal = 4 // sending the socket failed
	exitSandbox  = 5 // the lockdown failed: nothing was served (porter's own)
)

// probe, set only in builds with the creatortest tag (probe_test.go's
// build of the creator), runs after the lockdown instead of serving.
var probe func(lockdown.Report) int

// request is one decoded 'S' command; addr holds 4 or 16 bytes.
type request struct {
	typ, family byte
	port        uint16
	addr        [16]byte
}

// status says what decode found.
type status int

const (
	create    status = iota // a valid 'S' request
	terminate               // 'T'
	invalid                 // a bad command, type or family byte
	eof                     // input ended before or inside a command
)

// decode reads one command with fixed-length reads. read fills its whole
// argument or reports false at end of input.
func decode(read func([]byte) bool) (request, status) {
	var r request
	var b [18]byte
	if !read(b[:1]) {
		return r, eof
	}
	switch b[0] {
	case 'T':
		return r, terminate
	case 'S':
	default:
		return r, invalid
	}
	// Type and family together, then both checked, as the original.
	if !read(b[:2]) {
		return r, eof
	}
	r.typ, r.family = b[0], b[1]
	if r.typ != 'U' && r.typ != 'T' {
		return r, invalid
	}
	n := 2 + 4
	switch r.family {
	case '4':
	case '6':
		n = 2 + 16
	default:
		return r, invalid
	}
	if !read(b[:n]) {
		return r, eof
	}
	r.port = uint16(b[0])<<8 | uint16(b[1])
	copy(r.addr[:], b[2:n])
	return r, create
}

// readFull fills b from fd, retrying on EINTR and waiting in poll(2) if
// the descriptor is non-blocking. It reports false at end of input or on
// an error.
func readFull(fd int, b []byte) bool {
	for len(b) > 0 {
		n, err := unix.Read(fd, b)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			if !wait(fd, unix.POLLIN) {
				return false
			}
			continue
		case err != nil || n <= 0:
			return false
		}
		b = b[n:]
	}
	return true
}

// send writes b, with socket fd as SCM_RIGHTS when fd >= 0, in one sendmsg.
func send(b []byte, fd int) bool {
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	for len(b) > 0 {
		n, err := unix.SendmsgN(out, b, oob, nil, unix.MSG_NOSIGNAL)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			if !wait(out, unix.POLLOUT) {
				return false
			}
			continue
		case err != nil:
			return false
		}
		b, oob = b[n:], nil // the fd went with the first byte
	}
	return true
}

func wait(fd int, ev int16) bool {
	for {
		p := []unix.PollFd{{Fd: int32(fd), Events: ev}}
		_, err := unix.Poll(p, -1)
		if err != unix.EINTR {
			return err == nil
		}
	}
}

// makeSocket creates and binds the socket r asks for, with the options of
// docs/protocol-creator.md. On failure it returns the step that failed
// ('S' socket, 'B' bind or option) and the errno.
func makeSocket(r *request) (int, byte, unix.Errno) {
	domain, typ := unix.AF_INET, unix.SOCK_STREAM
	if r.family == '6' {
		domain = unix.AF_INET6
	}
	if r.typ == 'U' {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, 'S', errno(err)
	}
	fail := func(err error) (int, byte, unix.Errno) {
		unix.Close(fd)
		return -1, 'B', errno(err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fail(err)
	}
	var sa unix.Sockaddr
	if domain == unix.AF_INET6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return fail(err)
		}
		sa6 := &unix.SockaddrInet6{Port: int(r.port)}
		copy(sa6.Addr[:], r.addr[:16])
		sa = sa6
	} else {
		sa4 := &unix.SockaddrInet4{Port: int(r.port)}
		copy(sa4.Addr[:], r.addr[:4])
		sa = sa4
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fail(err)
	}
	if domain == unix.AF_INET6 && typ == unix.SOCK_DGRAM {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU, 1280); err != nil {
			return fail(err)
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DONT); err != nil {
			return fail(err)
		}
	}
	return fd, 0, 0
}

func errno(err error) unix.Errno {
	if e, ok := err.(unix.Errno); ok {
		return e
	}
	return unix.EINVAL
}

// isUnixSocket reports whether fd is an AF_UNIX socket.
func isUnixSocket(fd int) bool {
	d, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	return err == nil && d == unix.AF_UNIX
}

// serve answers requests until one ends the creator; it returns the exit
// status.
func serve() int {
	read := func(b []byte) bool { return readFull(in, b) }
	for {
		r, st := decode(read)
		switch st {
		case eof:
			return exitRead
		case terminate:
			return exitOK
		case invalid:
			if !send([]byte("FI"), -1) {
				return exitWrite // as the original: a failed write wins
			}
			return exitProtocol
		}
		fd, step, e := makeSocket(&r)
		if fd < 0 {
			// 'E', the step, and errno as a native-endian C int.
			v := int32(e)
			ans := [6]byte{'E', step}
			copy(ans[2:], unsafe.Slice((*byte)(unsafe.Pointer(&v)), 4))
			if !send(ans[:], -1) {
				return exitWrite
			}
			continue
		}
		if !send([]byte{'S'}, -1) {
			unix.Close(fd)
			return exitWrite
		}
		ok := send([]byte{0}, fd)
		unix.Close(fd)
		if !ok {
			return exitInternal
		}
	}
}

func main() {
	if len(os.Args) > 1 {
		status := exitRead
		if a := os.Args[1]; a == "-h" || a == "--help" || a == "-help" {
			status = exitOK
		}
		os.Stderr.WriteString("usage: porter-creator <SOCKET >&0\n\n" +
			"porter's privileged socket creator. It takes no arguments: it reads\n" +
			"requests on stdin and answers on stdout, which must be one Unix socket,\n" +
			"in BIND10's socket-creator protocol (docs/protocol-creator.md).\n" +
			"It is started by `porter up`, not by hand.\n")
		os.Exit(status)
	}
	for _, fd := range []int{in, out} {
		if !isUnixSocket(fd) {
			name := "stdin"
			if fd == out {
				name = "stdout"
			}
			os.Stderr.WriteString("porter-creator: " + name + " is not a Unix socket: sockets can only be passed over one (start it with a socketpair as stdin and stdout)\n")
			os.Exit(exitRead)
		}
	}
	r, err := lockdown.Creator()
	if err != nil {
		os.Stderr.WriteString("porter-creator: refusing to serve: " + err.Error() + "\n")
		os.Exit(exitSandbox)
	}
	if !r.Seccomp {
		os.Stderr.WriteString("porter-creator: WARNING: no seccomp filter (" + r.NoSeccomp + "): the creator runs without a system call allow-list\n")
	}
	if r.Landlock == 0 {
		os.Stderr.WriteString("porter-creator: no Landlock (" + r.NoLandlock + "): the seccomp filter alone keeps it from the file system\n")
	}
	if probe != nil {
		os.Exit(probe(r))
	}
	os.Exit(serve())
}
