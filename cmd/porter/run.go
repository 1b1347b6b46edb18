package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/porter-ipc/porter"
	"github.com/porter-ipc/porter/broker"
	"golang.org/x/sys/unix"
)

func init() {
	commands["run"] = command{"run a program with sockets from the broker (LISTEN_FDS)", runMain}
}

const runUsage = `usage: porter run [options] --listen [NAME=]URL... [--] PROG [ARGS...]

Asks the broker (porter up) for each socket, then execs PROG with them as
fds 3, 4, ... and LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES set: systemd's
socket activation, which many daemons (and porter.Listeners in Go) support.
PROG keeps porter run's pid and its connection to the broker, so when PROG
exits or is killed the broker takes its references back.

  porter run --listen tcp://0.0.0.0:80 --listen dns=udp://[::]:53 -- ./mydaemon

URL is PROTO://HOST:PORT with PROTO tcp, tcp4, tcp6, udp, udp4 or udp6;
an empty HOST is 0.0.0.0 (:: for tcp6/udp6). TCP sockets come listening,
UDP sockets bound. NAME (default PROTO-PORT, e.g. tcp-80) goes into
LISTEN_FDNAMES; it may not contain ':' and has at most 255 characters.
The broker connection is fd 3+LISTEN_FDS, named in PORTER_BROKER_FD.

Options:
`

// listenFlag collects --listen values.
type listenFlag []string

func (l *listenFlag) String() string     { return strings.Join(*l, ",") }
func (l *listenFlag) Set(v string) error { *l = append(*l, v); return nil }

// listenSpec is one parsed --listen.
type listenSpec struct {
	name string
	req  broker.Request
}

func runMain(args []string) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, runUsage); fs.PrintDefaults() }
	var listens listenFlag
	fs.Var(&listens, "listen", "a socket to get, `[NAME=]URL` (repeatable)")
	sock := fs.String("socket", "", "broker control socket (default $PORTER_SOCKET, else porter up's default)")
	share := fs.String("share", "app", "share `MODE`: none, app (same --app name) or any")
	app := fs.String("app", "", "application name for sharing (default PROG's base name)")
	if err := fs.Parse(args); err != nil {
		return exitUsage(err)
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "porter run: no program to run (porter run --listen URL -- PROG ARGS...)")
		return 2
	}
	if len(listens) == 0 {
		fmt.Fprintln(os.Stderr, "porter run: no --listen given: nothing to ask the broker for")
		return 2
	}
	mode, err := broker.ParseShare(*share)
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter run: --share: %v\n", err)
		return 2
	}
	prog := fs.Arg(0)
	if *app == "" {
		*app = filepath.Base(prog)
	}
	var specs []listenSpec
	for _, l := range listens {
		s, err := parseListen(l)
		if err != nil {
			fmt.Fprintf(os.Stderr, "porter run: --listen %s: %v\n", l, err)
			return 2
		}
		s.req.Share, s.req.App = mode, *app
		specs = append(specs, s)
	}
	path, err := exec.LookPath(prog)
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter run: %v\n", err)
		return 127
	}

	cl, clfd, err := dialBlocking(*sock)
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter run: %v\n", err)
		return 1
	}
	var files []*os.File
	var names []string
	for _, s := range specs {
		g, err := cl.Request(s.req)
		if err != nil {
			fmt.Fprintf(os.Stderr, "porter run: %s: %v\n", s.name, err)
			return 1
		}
		files = append(files, g.File)
		names = append(names, s.name)
	}
	conn, err := cl.File()
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter run: %v\n", err)
		return 1
	}
	files = append(files, conn)
	src := make([]int, len(files))
	for i, f := range files {
		src[i] = rawFD(f)
	}
	if err := placeFDs(3, src, clfd); err != nil {
		fmt.Fprintf(os.Stderr, "porter run: %v\n", err)
		return 1
	}
	env := activationEnv(os.Environ(), len(names), names)
	err = syscall.Exec(path, fs.Args(), env)
	// Until exec, no finalizer may close a descriptor that now has a
	// placed socket behind it.
	runtime.KeepAlive(cl)
	runtime.KeepAlive(files)
	fmt.Fprintf(os.Stderr, "porter run: exec %s: %v\n", path, err)
	return 126
}

// parseListen parses [NAME=]PROTO://HOST:PORT.
func parseListen(v string) (listenSpec, error) {
	var s listenSpec
	name, url, hasName := strings.Cut(v, "=")
	if !hasName || strings.Contains(name, "://") {
		name, url = "", v
	} else if name == "" {
		return s, errors.New("empty name before '=': want 1 to 255 characters")
	}
	scheme, hostport, ok := strings.Cut(url, "://")
	if !ok {
		return s, errors.New("want PROTO://HOST:PORT, e.g. tcp://0.0.0.0:80 or udp://[::]:53")
	}
	switch scheme {
	case "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
	default:
		return s, fmt.Errorf("protocol %q: want tcp, tcp4, tcp6, udp, udp4 or udp6", scheme)
	}
	proto, ap, err := porter.ResolveAddr(scheme, hostport)
	if err != nil {
		return s, err
	}
	if name == "" {
		name = fmt.Sprintf("%s-%d", proto, ap.Port())
	}
	if err := checkFDName(name); err != nil {
		return s, err
	}
	s.name = name
	s.req = broker.Request{Proto: proto, Addr: ap}
	return s, nil
}

// checkFDName applies systemd's rules for LISTEN_FDNAMES entries.
func checkFDName(n string) error {
	if n == "" || len(n) > 255 {
		return fmt.Errorf("name %q: want 1 to 255 characters", n)
	}
	for _, r := range n {
		if r == ':' || r < 0x20 || r > 0x7e {
			return fmt.Errorf("name %q: only printable ASCII without ':' (systemd's rule for LISTEN_FDNAMES)", n)
		}
	}
	return nil
}

// dialBlocking connects to the broker with a blocking socket. porter run
// must not start Go's netpoller: it is about to place sockets on fds 3...,
// and the netpoller's epoll fd could sit there.
func dialBlocking(path string) (*broker.Client, int, error) {
	if path == "" {
		path = broker.DefaultSocket()
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, -1, os.NewSyscallError("socket", err)
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return nil, -1, fmt.Errorf("connect to the broker at %s: %w (is porter up running? set %s or --socket)", path, err, broker.SocketEnv)
	}
	cl, err := broker.NewClient(os.NewFile(uintptr(fd), path))
	return cl, fd, err
}

// placeFDs puts the descriptors src on first, first+1, ... without
// close-on-exec, for the program about to be exec'd. Each is first copied
// above the target range, so no source is overwritten before it is
// copied. The target range must hold nothing but the sources, the other
// close-on-exec fds in also (ours, gone at exec), and the Go runtime's
// cgroup limit files (read with pread, which fails harmlessly on a socket
// until exec closes them). The caller must not have started Go's netpoller,
// whose epoll fd could sit in the range.
func placeFDs(first int, src []int, also ...int) error {
	top := first + len(src)
	ours := map[int]bool{}
	for _, fd := range append(also, src...) {
		ours[fd] = true
	}
	for fd := first; fd < top; fd++ {
		if ours[fd] {
			continue
		}
		l, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
		if err != nil || strings.HasPrefix(l, "/sys/fs/cgroup/") {
			continue
		}
		return fmt.Errorf("internal error: fd %d (%s) is in use and would be replaced by a socket", fd, l)
	}
	high := make([]int, len(src))
	for i, fd := range src {
		h, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, top)
		if err != nil {
			return os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", err)
		}
		high[i] = h
	}
	for i, h := range high {
		if err := unix.Dup3(h, first+i, 0); err != nil {
			return os.NewSyscallError("dup3", err)
		}
	}
	return nil
}

// rawFD returns f's descriptor without (*os.File).Fd, which would switch
// the open file description, shared with other holders, to blocking mode.
func rawFD(f *os.File) int {
	fd := -1
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(u uintptr) { fd = int(u) })
	}
	return fd
}

// activationEnv returns env without any LISTEN_* or PORTER_BROKER_FD
// variable, plus systemd's socket activation variables for n fds with
// names, this process's pid (which PROG keeps across exec), and the broker
// connection's fd.
func activationEnv(env []string, n int, names []string) []string {
	out := withoutVars(env, "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "PORTER_BROKER_FD")
	return append(out,
		"LISTEN_PID="+strconv.Itoa(os.Getpid()),
		"LISTEN_FDS="+strconv.Itoa(n),
		"LISTEN_FDNAMES="+strings.Join(names, ":"),
		"PORTER_BROKER_FD="+strconv.Itoa(3+n),
	)
}
