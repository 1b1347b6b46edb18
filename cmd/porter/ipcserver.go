package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/porter-ipc/porter/access"
	"github.com/porter-ipc/porter/fdpass"
	"github.com/porter-ipc/porter/internal/lockdown"
	"github.com/porter-ipc/porter/ipc"
)

func init() {
	commands["ipcserver"] = command{"serve a local service: run PROG for each client of a Unix socket (s6-ipcserver)", ipcserverMain}
}

const ipcserverUsage = `usage: porter ipcserver [options] PATH [--] PROG [ARGS...]

A UCSPI super-server for Unix sockets, interchangeable with s6-ipcserver:
it binds PATH and, for every client, runs PROG with the connection as its
stdin and stdout and these variables set:

  PROTO=IPC  IPCREMOTEEUID  IPCREMOTEEGID  IPCREMOTEPATH  IPCCONNNUM
  (with -i, -x or --allow-*: also IPCLOCALPATH and the rule's env/)

The client's uid and gid come from the kernel (SO_PEERCRED). Access rules
in s6's accessrules format decide who is served: -i DIR (uid/N, gid/N,
uid/default with allow or deny files and an env/ directory), or -x FILE,
the CDB form made by s6-accessrules-cdb-from-fs. Lookup order: uid/self,
uid/N, gid/self, gid/N, uid/default; no match denies.

  porter ipcserver -i /etc/myservice/rules /run/myservice.sock -- myservice-handler
  porter ipcserver --allow-uid 0,1000 -a 0666 /run/echo.sock cat

Over -c connections it stops accepting (clients wait in the backlog); over
-C connections from one uid it accepts and closes at once.

Signals, as for s6-ipcserverd: SIGTERM exits at once and leaves the
running PROGs serving their clients; SIGQUIT sends them SIGTERM and
SIGCONT, then exits; SIGABRT sends them SIGKILL, then exits; SIGHUP sends
them SIGTERM and SIGCONT and goes on serving. The socket file stays.

Privilege: with -u, -g or -U to a non-root user, porter ipcserver drops
for good before serving: no capabilities, an empty bounding set and no
new privileges, which every PROG inherits (a set-uid or file-capability
helper run by PROG gains nothing: unlike s6). -u or -g without -G leaves
no supplementary group (s6 keeps root's).

Options cluster as with getopt (-1v -c5). Exit status: 100 for a wrong
command line, 111 when the system refuses (bind, setuid ...), 0 after a
signal.

Options:
`

func ipcserverMain(args []string) int {
	fs := flag.NewFlagSet("ipcserver", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, ipcserverUsage); fs.PrintDefaults() }
	quiet := fs.Bool("q", false, "quiet: log nothing")
	fs.Bool("Q", false, "normal verbosity: log errors and refusals (default)")
	verbose := fs.Bool("v", false, "verbose: log every connection")
	ready := fs.Bool("1", false, "write a newline to stdout once listening, then close stdout")
	notifyFD := fs.Int("notify-fd", -1, "write a newline to fd `N` once listening, then close it (s6-supervise readiness)")
	fs.Bool("d", true, "replace a stale socket file at PATH (default; a live server's socket is never replaced)")
	noReplace := fs.Bool("D", false, "refuse to start if anything exists at PATH")
	noCred := fs.Bool("P", false, "do not put the client's credentials in the environment")
	fs.Bool("p", true, "put the client's credentials in the environment (default)")
	perms := fs.String("a", "0777", "permissions of the socket file (octal); access rules still apply")
	maxConns := fs.Int("c", ipc.DefaultMaxConns, "at most `N` connections at once; more wait in the backlog")
	maxPerUID := fs.Int("C", ipc.DefaultMaxPerUID, "at most `N` connections from one uid; more are closed at once")
	backlog := fs.Int("b", 0, "listen(2) backlog (0: the kernel's maximum)")
	gidList := fs.String("G", "", "after binding, set the supplementary groups to the gid (-g's, else the current one) and `gid,gid,...`")
	gid := fs.Int("g", -1, "after binding, set the gid to `GID`")
	uid := fs.Int("u", -1, "after binding, set the uid to `UID`")
	fromEnv := fs.Bool("U", false, "after binding, set uid, gid and groups from $UID, $GID and $GIDLIST")
	rulesDir := fs.String("i", "", "access rules `DIR` in s6-accessrules-fs format")
	rulesCDB := fs.String("x", "", "access rules `FILE` in s6-accessrules-cdb-from-fs format (reopened when replaced)")
	allowUID := fs.String("allow-uid", "", "serve only these uids (`uid,uid,...`; with --allow-gid, either may match)")
	allowGID := fs.String("allow-gid", "", "serve only clients whose gid is one of `gid,gid,...`")
	if code := parseGetopt(fs, args); code >= 0 {
		return code
	}
	rest := fs.Args()
	if len(rest) < 2 || (rest[1] == "--" && len(rest) < 3) {
		fmt.Fprintln(os.Stderr, "porter ipcserver: need PATH and PROG (porter ipcserver PATH -- PROG ARGS...)")
		return exitBadUsage
	}
	path, prog := rest[0], rest[1:]
	if prog[0] == "--" {
		prog = prog[1:]
	}
	perm, err := strconv.ParseUint(*perms, 8, 32)
	if err != nil || perm > 0o777 {
		fmt.Fprintf(os.Stderr, "porter ipcserver: -a %q is not an octal permission like 0660\n", *perms)
		return exitBadUsage
	}
	level := slog.LevelWarn
	switch {
	case *quiet:
		level = slog.LevelError + 4
	case *verbose:
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	rules, err := ipcRules(*rulesDir, *rulesCDB, *allowUID, *allowGID)
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter ipcserver: %v\n", err)
		return exitStatus(err)
	}
	drop, err := ipcDrop(*uid, *gid, *gidList, *fromEnv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter ipcserver: %v\n", err)
		return exitStatus(err)
	}

	lc := &ipc.ListenConfig{Perm: os.FileMode(perm) | os.ModeSocket, Backlog: *backlog, NoReplace: *noReplace}
	l, err := ipc.Listen(path, lc)
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter ipcserver: %v\n", err)
		return exitSysError
	}
	if drop != nil {
		if err := drop(); err != nil {
			l.Close()
			fmt.Fprintf(os.Stderr, "porter ipcserver: dropping privileges: %v\n", err)
			return exitSysError
		}
	}
	if *fromEnv { // s6-applyuidgid -U takes them out of PROG's environment too
		os.Unsetenv("UID")
		os.Unsetenv("GID")
		os.Unsetenv("GIDLIST")
	}

	spawn := &ipc.Spawn{Argv: prog, NoCred: *noCred}
	spawn.Started = func(pid int, peer fdpass.Cred, err error) {
		if err != nil {
			log.Error("cannot run the program", "prog", prog[0], "uid", peer.UID, "err", err)
			return
		}
		log.Info("start", "pid", pid, "uid", peer.UID, "gid", peer.GID)
	}
	spawn.Exited = func(pid int, peer fdpass.Cred, st *os.ProcessState) {
		log.Info("end", "pid", pid, "uid", peer.UID, "status", st.String())
	}
	srv := &ipc.Server{Handler: spawn, Rules: rules, MaxConns: *maxConns, MaxPerUID: *maxPerUID}
	srv.Log = func(e ipc.Event) {
		attrs := []any{"uid", e.Peer.UID, "gid", e.Peer.GID, "pid", e.Peer.PID, "count", e.Count, "open", e.Open}
		if e.Rule != "" {
			attrs = append(attrs, "rule", e.Rule)
		}
		switch e.Kind {
		case ipc.EventAllow:
			log.Info(ipc.EventAllow.String(), attrs...)
		case ipc.EventError:
			log.Error("connection failed", append(attrs, "err", e.Err)...)
		default:
			if e.Err != nil {
				attrs = append(attrs, "err", e.Err)
			}
			log.Warn(e.Kind.String(), attrs...)
		}
	}

	if *ready {
		os.Stdout.WriteString("\n")
		os.Stdout.Close()
	}
	if *notifyFD >= 0 {
		f := os.NewFile(uintptr(*notifyFD), "notify")
		if _, err := f.WriteString("\n"); err != nil {
			log.Error("readiness notification failed", "fd", *notifyFD, "err", err)
		}
		f.Close()
	}

	// The signals of s6-ipcserverd. SIGINT is left to its default, which
	// kills porter as it kills s6-ipcserverd. None removes the socket
	// file: s6 leaves it, and the next start replaces it.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGABRT)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	for {
		select {
		case err := <-served:
			if err != nil && !errors.Is(err, ipc.ErrServerClosed) {
				fmt.Fprintf(os.Stderr, "porter ipcserver: %v\n", err)
				return exitSysError
			}
			return 0
		case s := <-sigs:
			log.Info("signal", "signal", s.String())
			switch s {
			case syscall.SIGHUP: // the programs are told to end; serving goes on
				spawn.Signal(syscall.SIGTERM, syscall.SIGCONT)
				continue
			case syscall.SIGQUIT:
				spawn.Stop(syscall.SIGTERM, syscall.SIGCONT)
			case syscall.SIGABRT:
				spawn.Stop(syscall.SIGKILL)
			}
			// SIGTERM, and the two above once the programs are
			// signalled: exit now, leaving the programs running
			// with their connections.
			return 0
		}
	}
}

// ipcRules builds the access rules from at most one source.
func ipcRules(dir, cdb, uids, gids string) (access.Ruleset, error) {
	n := 0
	for _, s := range []string{dir, cdb, uids + gids} {
		if s != "" {
			n++
		}
	}
	if n > 1 {
		return nil, usageError{errors.New("give one of -i, -x and --allow-uid/--allow-gid")}
	}
	switch {
	case dir != "":
		st, err := os.Stat(dir)
		if err != nil {
			return nil, fmt.Errorf("-i: %w", err)
		}
		if !st.IsDir() {
			return nil, usageError{fmt.Errorf("-i %s: not a directory", dir)}
		}
		return access.Dir(dir), nil
	case cdb != "":
		f := &access.CDBFile{Path: cdb}
		if _, err := f.Lookup("uid/default"); err != nil {
			return nil, fmt.Errorf("-x %s: %w", cdb, err)
		}
		return f, nil
	case uids != "" || gids != "":
		u, err := parseIDList(uids)
		if err != nil {
			return nil, usageError{fmt.Errorf("--allow-uid: %w", err)}
		}
		g, err := parseIDList(gids)
		if err != nil {
			return nil, usageError{fmt.Errorf("--allow-gid: %w", err)}
		}
		return access.AllowIDs(u, g), nil
	}
	return nil, nil
}

func parseIDList(s string) ([]int, error) {
	var out []int
	if s == "" {
		return nil, nil
	}
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%q is not a numeric id", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// ipcDrop returns the privilege drop asked for, or nil for none. As with
// s6-applyuidgid, -G's list (and -U's $GIDLIST) is preceded by the gid
// the process ends with (-g's, $GID, else the current one), so that it
// is a supplementary group too. Unlike s6, -u or -g without -G or -U
// empties the supplementary groups instead of keeping root's.
func ipcDrop(uid, gid int, gidList string, fromEnv bool) (func() error, error) {
	setGroups := gidList != ""
	if fromEnv {
		var err error
		if uid, err = strconv.Atoi(os.Getenv("UID")); err != nil {
			return nil, usageError{errors.New("-U: $UID is not set to a number")}
		}
		if gid, err = strconv.Atoi(os.Getenv("GID")); err != nil {
			return nil, usageError{errors.New("-U: $GID is not set to a number")}
		}
		var ok bool
		if gidList, ok = os.LookupEnv("GIDLIST"); !ok {
			return nil, usageError{errors.New("-U: $GIDLIST is not set")}
		}
		setGroups = true
	}
	if uid < 0 && gid < 0 && !setGroups {
		return nil, nil
	}
	list, err := parseIDList(gidList)
	if err != nil {
		return nil, usageError{fmt.Errorf("-G: %w", err)}
	}
	var groups []int
	if setGroups {
		first := gid
		if first < 0 {
			first = os.Getegid()
		}
		groups = append([]int{first}, list...)
	} else {
		groups = []int{} // -u or -g alone: no supplementary groups (nil would keep them for -g)
	}
	// lockdown.Drop also empties the bounding set and sets no new
	// privileges when the uid ends non-root, which every PROG inherits.
	return func() error { return lockdown.Drop(uid, gid, groups) }, nil
}
