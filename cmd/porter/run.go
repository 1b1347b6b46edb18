package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/porter-ipc/porter/broker"
	"github.com/porter-ipc/porter/internal/fdutil"
	"github.com/porter-ipc/porter/internal/lockdown"
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

Fds 3 to 3+LISTEN_FDS must be free when porter run starts (close them, or
move s6's notification-fd above them); fds above are passed on to PROG.

With --user (as root), the sockets are asked for as root, under root's
rules; then porter run drops to USER (and USER's groups, or GROUP) and
picks them up on a new broker connection, so PROG holds them as USER and
its inherited connection has only USER's rights. A program that drops
privileges itself keeps porter run's connection, and with it root's
rights: use --user, or see docs/broker.md.

The control socket is --socket, else $PORTER_SOCKET, else
$XDG_RUNTIME_DIR/porter/porter.sock if it exists (not as root), else
/run/porter/porter.sock.

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
	sock := fs.String("socket", "", "the broker's control socket `PATH` (default: see above)")
	share := fs.String("share", "app", "share `MODE`: none, app (same --app name) or any")
	app := fs.String("app", "", "application `NAME` for sharing (default PROG's base name)")
	userSpec := fs.String("user", "", "as root, run PROG as `USER[:GROUP]`, its sockets held by USER (see above)")
	timeout := fs.Duration("timeout", defaultTimeout, timeoutUsage)
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
	if err := checkFDsFree(3, len(specs)); err != nil {
		fmt.Fprintf(os.Stderr, "porter run: %v\n", err)
		return 1
	}
	var target *runAs
	if *userSpec != "" {
		// Looking the user up reads /etc/passwd with os.Open, which
		// starts Go's netpoller: hold the fds the sockets go to
		// meanwhile, so that its epoll fd lands above them.
		release, rerr := reserveFDs(3, len(specs)+1)
		if rerr != nil {
			fmt.Fprintf(os.Stderr, "porter run: %v\n", rerr)
			return 1
		}
		target, err = lookupRunAs(*userSpec)
		release()
		if err != nil {
			fmt.Fprintf(os.Stderr, "porter run: --user: %v\n", err)
			return 2
		}
		if os.Geteuid() != 0 {
			fmt.Fprintf(os.Stderr, "porter run: --user %s: only root may switch users (porter run runs as uid %d)\n", *userSpec, os.Geteuid())
			return 1
		}
	}
	path, err := exec.LookPath(prog)
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter run: %v\n", err)
		return 127
	}
	if *sock == "" {
		*sock = broker.DefaultSocket()
	}

	cl, clfd, err := dialBlocking(*sock, *timeout)
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter run: %v\n", err)
		return 1
	}
	var files []*os.File
	var names []string
	if target == nil {
		for _, s := range specs {
			g, err := cl.Request(s.req)
			if err != nil {
				fmt.Fprintf(os.Stderr, "porter run: %s: %v\n", s.name, explainWait(err, *sock, *timeout))
				return 1
			}
			files = append(files, g.File)
			names = append(names, s.name)
		}
	} else {
		if cl, clfd, files, err = requestAs(cl, specs, target, *sock, *timeout); err != nil {
			fmt.Fprintf(os.Stderr, "porter run: %v\n", err)
			return 1
		}
		for _, s := range specs {
			names = append(names, s.name)
		}
	}
	// PROG gets the connection without porter run's timeouts.
	if err := setTimeouts(clfd, 0); err != nil {
		fmt.Fprintf(os.Stderr, "porter run: %v\n", err)
		return 1
	}
	conn, err := cl.File()
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter run: %v\n", err)
		return 1
	}
	files = append(files, conn)
	if err := placeFDs(3, files, clfd); err != nil {
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
	proto, ap, err := broker.ParseAddr(scheme, hostport)
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

// checkFDsFree fails if any fd from first to first+n (the n sockets and
// the broker connection) is open already: porter run would replace it.
// Only fds open on entry count (call it before opening any); the Go
// runtime's cgroup limit files are not in the way (see fdutil.Place).
func checkFDsFree(first, n int) error {
	return explainInTheWay(fdutil.CheckFree(first, n+1), first, n)
}

// explainInTheWay turns an *fdutil.InTheWayError into fdInTheWay's
// advice for n sockets on first...
func explainInTheWay(err error, first, n int) error {
	var iw *fdutil.InTheWayError
	if errors.As(err, &iw) {
		return fdInTheWay(iw.FD, iw.What, first, n)
	}
	return err
}

// fdInTheWay says that fd, open to what, sits where porter run puts n
// sockets and its broker connection, and what to do about it.
func fdInTheWay(fd int, what string, first, n int) error {
	return fmt.Errorf("fd %d is open (%s) and porter run would replace it: it puts the %d socket(s) on fds %d to %d and its broker connection on fd %d (systemd's LISTEN_FDS layout, which cannot move). "+
		"Close fd %d before porter run (sh: exec %d<&-; execline: fdclose %d), or start porter run with it on a higher number, which PROG inherits untouched; "+
		"if it is s6's notification-fd, write a number above %d to the service's notification-fd file and tell the program that number",
		fd, what, n, first, first+n-1, first+n, fd, fd, fd, first+n)
}

// reserveFDs fills every free fd from first to first+n-1 with /dev/null
// (close-on-exec, plain syscalls: no netpoller) until release, so that
// fds opened meanwhile land above that range.
func reserveFDs(first, n int) (release func(), err error) {
	var held []int
	release = func() {
		for _, fd := range held {
			unix.Close(fd)
		}
	}
	for {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			release()
			return nil, os.NewSyscallError("open /dev/null", err)
		}
		if fd >= first+n {
			unix.Close(fd)
			return release, nil
		}
		held = append(held, fd)
	}
}

// placeFDs puts files on first, first+1, ... for the program about to be
// exec'd (fdutil.Place), refusing to replace any fd in the range but
// files and ours (close-on-exec fds of porter run, gone at exec). The
// caller must not have started Go's netpoller, whose epoll fd could sit
// in the range.
func placeFDs(first int, files []*os.File, ours ...int) error {
	src := make([]int, len(files))
	for i, f := range files {
		// Number, not f.Fd(): Fd would switch the open file
		// description, shared with other holders, to blocking mode.
		n, err := fdutil.Number(f)
		if err != nil {
			return fmt.Errorf("fd of %s: %w", f.Name(), err)
		}
		src[i] = n
	}
	return explainInTheWay(fdutil.Place(first, src, fdutil.PlaceOptions{Ours: ours}), first, len(src)-1)
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

// runAs is the user --user names.
type runAs struct {
	name   string
	uid    int
	gid    int
	groups []int // supplementary groups
}

// lookupRunAs resolves USER[:GROUP], names or numbers. The supplementary
// groups are USER's from the group database (as login, su and
// s6-setuidgid give them), GROUP or USER's primary group first.
func lookupRunAs(spec string) (*runAs, error) {
	uname, gname, hasGroup := strings.Cut(spec, ":")
	u, err := user.Lookup(uname)
	if err != nil {
		if u, err = user.LookupId(uname); err != nil {
			return nil, fmt.Errorf("no user %q", uname)
		}
	}
	r := &runAs{name: u.Username}
	r.uid, _ = strconv.Atoi(u.Uid)
	r.gid, _ = strconv.Atoi(u.Gid)
	if hasGroup {
		g, err := user.LookupGroup(gname)
		if err != nil {
			if g, err = user.LookupGroupId(gname); err != nil {
				return nil, fmt.Errorf("no group %q", gname)
			}
		}
		r.gid, _ = strconv.Atoi(g.Gid)
	}
	r.groups = []int{r.gid}
	ids, err := u.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("groups of %s: %v", u.Username, err)
	}
	for _, id := range ids {
		if g, err := strconv.Atoi(id); err == nil && !slices.Contains(r.groups, g) {
			r.groups = append(r.groups, g)
		}
	}
	return r, nil
}

// requestAs gets the sockets for PROG running as target: each is
// requested deferred on cl (root's connection, so root's rules decide),
// then porter run drops to target and picks them up on a new connection,
// whose SO_PEERCRED is target's. It returns that connection, its fd and
// the sockets, and closes cl. A connection keeps the credentials of its
// connect(2) for good: had PROG inherited cl, it could do what root may
// (release anyone's tokens, get what root's rules allow). On error the
// tokens not picked up are released.
func requestAs(cl *broker.Client, specs []listenSpec, target *runAs, path string, timeout time.Duration) (*broker.Client, int, []*os.File, error) {
	defer cl.Close()
	var toks []broker.Token
	release := func() {
		for _, t := range toks {
			cl.Release(t) // root's connection may release what root asked for
		}
	}
	for _, s := range specs {
		r := s.req
		r.Defer = true
		g, err := cl.Request(r)
		if err != nil {
			release()
			return nil, -1, nil, fmt.Errorf("%s: %w", s.name, explainWait(err, path, timeout))
		}
		toks = append(toks, g.Token)
	}
	// The ids alone, as su and s6-setuidgid change them: PROG is
	// target's program and may gain privilege as target could (set-id
	// and file-capability executables), so no bounding set or
	// no-new-privileges is imposed on it (see lockdown.SetIDs).
	if err := lockdown.SetIDs(target.uid, target.gid, target.groups); err != nil {
		release()
		return nil, -1, nil, fmt.Errorf("--user %s: %w", target.name, err)
	}
	ucl, ufd, err := dialBlocking(path, timeout)
	if err != nil {
		release()
		return nil, -1, nil, fmt.Errorf("as %s: %w", target.name, err)
	}
	var files []*os.File
	for i, t := range toks {
		g, err := ucl.Pickup(t)
		if err != nil {
			toks = toks[i:]
			release()
			for _, f := range files {
				f.Close()
			}
			ucl.Close()
			return nil, -1, nil, fmt.Errorf("%s: picking the socket up as %s: %w", specs[i].name, target.name, explainWait(err, path, timeout))
		}
		files = append(files, g.File)
	}
	return ucl, ufd, files, nil
}
