package main

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"runtime"
	"syscall"

	"github.com/porter-ipc/porter/internal/fdutil"
	"golang.org/x/sys/unix"
)

func init() {
	commands["ipcclient"] = command{"connect to a local service and run PROG on the connection (s6-ipcclient)", ipcclientMain}
}

const ipcclientUsage = `usage: porter ipcclient [-p LOCALPATH] [-l LOCALNAME] PATH [--] PROG [ARGS...]

A UCSPI client for Unix sockets, interchangeable with s6-ipcclient: it
connects to PATH and execs PROG with fd 6 reading from the connection and
fd 7 writing to it, PROTO=IPC and IPCLOCALPATH set.

  porter ipcclient /run/echo.sock sh -c 'echo hello >&7; head -1 <&6'

Options:
`

func ipcclientMain(args []string) int {
	fs := flag.NewFlagSet("ipcclient", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, ipcclientUsage); fs.PrintDefaults() }
	fs.Bool("q", false, "quiet (accepted for s6-ipcclient compatibility)")
	fs.Bool("Q", false, "normal verbosity (accepted for s6-ipcclient compatibility)")
	fs.Bool("v", false, "verbose (accepted for s6-ipcclient compatibility)")
	bindPath := fs.String("p", "", "bind the local socket to `LOCALPATH` before connecting")
	localName := fs.String("l", "", "set IPCLOCALPATH to `LOCALNAME` (default: LOCALPATH, else empty)")
	if code := parseGetopt(fs, args); code >= 0 {
		return code
	}
	rest := fs.Args()
	if len(rest) < 2 || (rest[1] == "--" && len(rest) < 3) {
		fmt.Fprintln(os.Stderr, "porter ipcclient: need PATH and PROG (porter ipcclient PATH -- PROG ARGS...)")
		return exitBadUsage
	}
	path, prog := rest[0], rest[1:]
	if prog[0] == "--" {
		prog = prog[1:]
	}
	bin, err := exec.LookPath(prog[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter ipcclient: %v\n", err)
		return execStatus(err)
	}
	// A blocking socket made with plain syscalls: Go's netpoller must not
	// start, as its epoll fd could sit on 6 or 7, which onFDs67 replaces.
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter ipcclient: socket: %v\n", err)
		return exitSysError
	}
	if *bindPath != "" {
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: *bindPath}); err != nil {
			fmt.Fprintf(os.Stderr, "porter ipcclient: bind %s: %v\n", *bindPath, err)
			return exitSysError
		}
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		fmt.Fprintf(os.Stderr, "porter ipcclient: connect %s: %v\n", path, err)
		return exitSysError
	}
	if err := onFDs67(fd); err != nil {
		fmt.Fprintf(os.Stderr, "porter ipcclient: %v\n", err)
		return exitSysError
	}
	local := *localName
	if local == "" {
		local = *bindPath
	}
	env := append(withoutVars(os.Environ(), "PROTO", "IPCLOCALPATH"), "PROTO=IPC", "IPCLOCALPATH="+local)
	err = syscall.Exec(bin, prog, env)
	runtime.KeepAlive(fd)
	fmt.Fprintf(os.Stderr, "porter ipcclient: exec %s: %v\n", bin, err)
	return execStatus(err)
}

// execStatus is the status after PROG could not be run, as s6-ipcclient
// and the shell give it: 127 when it is not there, 126 otherwise (not
// executable, no permission …).
func execStatus(err error) int {
	if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
		return 127
	}
	return 126
}

// onFDs67 puts the connection fd on fds 6 and 7 without close-on-exec,
// replacing whatever they held, as s6-ipcclient does (fdutil.Place with
// Replace); fd stays close-on-exec and goes at exec.
func onFDs67(fd int) error {
	return fdutil.Place(6, []int{fd, fd}, fdutil.PlaceOptions{Replace: true})
}

// withoutVars returns env without the named variables.
func withoutVars(env []string, names ...string) []string {
	out := env[:0:0]
next:
	for _, e := range env {
		for _, n := range names {
			if len(e) > len(n) && e[:len(n)] == n && e[len(n)] == '=' {
				continue next
			}
		}
		out = append(out, e)
	}
	return out
}
