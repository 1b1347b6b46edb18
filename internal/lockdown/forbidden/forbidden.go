// Package forbidden lists what a porter-creator locked down by
// lockdown.Creator must not be able to do. The lockdown tests try each in
// a child after the lockdown, and so does a build of porter-creator with
// the creatortest tag; the shipped creator does not link it.
package forbidden

import (
	"os"

	"golang.org/x/sys/unix"
)

// Call is one forbidden system call; Try makes it and returns its error
// (nil if the kernel let it through).
type Call struct {
	Name string
	Try  func() error
}

func sock(domain, typ, proto int) func() error {
	return func() error {
		fd, err := unix.Socket(domain, typ, proto)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}
}

// Calls are the forbidden calls, each harmless if it went through.
var Calls = []Call{
	{"open", func() error {
		fd, err := unix.Open("/etc/passwd", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}},
	{"exec", func() error { return unix.Exec("/bin/true", []string{"true"}, nil) }},
	{"ptrace", func() error { return unix.PtraceAttach(0) }},
	{"ptrace-traceme", func() error {
		_, _, e := unix.RawSyscall(unix.SYS_PTRACE, unix.PTRACE_TRACEME, 0, 0)
		return errnoErr(e)
	}},
	{"socket-unix", sock(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)},
	{"socketpair", func() error {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			unix.Close(fds[0])
			unix.Close(fds[1])
		}
		return err
	}},
	{"socket-netlink", sock(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)},
	{"socket-raw", sock(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)},
	{"socket-packet", sock(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)},
	{"socket-icmp-ping", sock(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)},
	{"socket-seqpacket6", sock(unix.AF_INET6, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)},
	{"socket-nonblock", sock(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)},
	{"listen", func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Listen(fd, 1)
	}},
	{"connect", func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Connect(fd, &unix.SockaddrInet4{Port: 9, Addr: [4]byte{127, 0, 0, 1}})
	}},
	{"fork", func() error {
		pid, _, e := unix.RawSyscall6(unix.SYS_CLONE, uintptr(unix.SIGCHLD), 0, 0, 0, 0, 0)
		if e == 0 && pid == 0 {
			unix.RawSyscall(unix.SYS_EXIT_GROUP, 0, 0, 0) // the child, had it been allowed
		}
		return errnoErr(e)
	}},
	{"mmap-exec", func() error {
		b, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err == nil {
			unix.Munmap(b)
		}
		return err
	}},
	{"kill-parent", func() error { return unix.Kill(os.Getppid(), 0) }},
	{"prctl-dumpable", func() error { return unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0) }},
	{"setuid", func() error { return unix.Setuid(0) }},
	{"unshare", func() error { return unix.Unshare(unix.CLONE_NEWUSER) }},
}

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}
