package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/porter-ipc/porter/broker"
	"github.com/porter-ipc/porter/creator"
	"github.com/porter-ipc/porter/internal/lockdown"
	"github.com/porter-ipc/porter/internal/sockpath"
	"golang.org/x/sys/unix"
)

func init() {
	commands["up"] = command{"run the socket broker (the daemon)", upMain}
}

const upUsage = `usage: porter up [options]

Runs porter's socket broker in the foreground. It starts porter-creator,
the small privileged helper that binds sockets, then (as root) drops to an
unprivileged user and serves requests for sockets on a Unix control socket.
No config file is needed.

  porter up                        # as root: /run/porter/porter.sock, runs as porter or nobody
  porter run --listen tcp://0.0.0.0:80 -- ./mydaemon

Access: without --rules everyone may ask for ports 1024 and above and
nobody for lower ports. A rules file lists who may have what:

  allow uid=www-data proto=tcp port=80,443
  allow gid=bind port=53

As root the creator runs as USER (default: the user porter if it exists,
else nobody) with only CAP_NET_BIND_SERVICE, no new privileges, no file
system and a seccomp allow-list; the broker runs as USER with no
capabilities, an empty bounding set and no new privileges. porter up
refuses to stay root (a --user of uid 0 is an error). If the creator dies,
or does not answer within --creator-timeout (stopped, hung: it is then
killed), the broker keeps serving the sockets it holds and refuses new
ones with CREATOR_GONE; restart porter up (or use --exit-on-creator-loss
under a service manager) to get it back.

The control socket is DIR/porter.sock. DIR defaults to /run/porter as root,
else $XDG_RUNTIME_DIR/porter (/run/porter when that is unset). Clients
look at $PORTER_SOCKET, else that socket of their own user's, else
/run/porter/porter.sock. As root, porter up makes DIR if it is missing,
owned by USER (as systemd's RuntimeDirectory=), so that it can remove its
socket at exit. A stale socket left there is replaced; a live one
(another broker) or a file that is not a socket is an error.

porter-creator is found at $PORTER_CREATOR if set, else next to this
porter binary, else in $PATH.

Options:
`

func upMain(args []string) int {
	// Whatever started porter up may have left fds open without
	// close-on-exec: none of them is for the privileged creator.
	if err := cloexecFrom(3); err != nil {
		fmt.Fprintf(os.Stderr, "porter up: marking inherited fds close-on-exec: %v\n", err)
		return 1
	}
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, upUsage); fs.PrintDefaults() }
	dir := fs.String("dir", broker.DefaultDir(), "the directory `DIR` that holds the control socket, porter.sock")
	userName := fs.String("user", "", "as root, the `USER` to run as after starting the creator (default: porter if that user exists, else nobody)")
	rulesFile := fs.String("rules", "", "rules `FILE` saying which uids/gids may have which ports (default: ports >= 1024 for everyone)")
	linger := fs.Duration("linger", 0, "keep a socket for `DURATION` (e.g. 30s) after its last holder lets go, so a restarted daemon gets the same one")
	backlog := fs.Int("backlog", broker.DefaultBacklog, "listen(2) backlog of TCP sockets, `N`")
	mode := fs.String("socket-mode", "0666", "permissions of the control socket, octal `MODE`")
	tokenTTL := fs.Duration("token-ttl", broker.DefaultTokenTTL, "how long (`DURATION`) a prepared token waits to be picked up")
	maxSockets := fs.Int("max-sockets", broker.DefaultMaxSocketsPerUID, "`N` socket references per uid (-1: unlimited)")
	maxTokens := fs.Int("max-tokens", broker.DefaultMaxTokensPerUID, "`N` pending tokens per uid (-1: unlimited)")
	maxConns := fs.Int("max-conns", broker.DefaultMaxConnsPerUID, "`N` open client connections per uid (-1: unlimited)")
	exitOnLoss := fs.Bool("exit-on-creator-loss", false, "exit (status 3) when the creator dies, so a service manager restarts porter with privilege")
	creatorTimeout := fs.Duration("creator-timeout", creator.DefaultTimeout, "wait at most `DURATION` for the creator to answer a request for a new socket; "+
		"past it the link is broken and the creator killed, that request and every later new socket get CREATOR_GONE (cached sockets are still served), and with --exit-on-creator-loss porter up exits 3")
	creatorAsRoot := fs.Bool("creator-as-root", false, "as root, keep the creator root instead of USER with CAP_NET_BIND_SERVICE (for kernels without ambient capabilities)")
	verbose := fs.Bool("v", false, "log every request (debug level)")
	if err := fs.Parse(args); err != nil {
		return exitUsage(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "porter up: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *creatorTimeout <= 0 {
		fmt.Fprintf(os.Stderr, "porter up: --creator-timeout %v: want a duration above 0, such as 10s\n", *creatorTimeout)
		return 2
	}
	perm, err := strconv.ParseUint(*mode, 8, 32)
	if err != nil || perm > 0o777 {
		fmt.Fprintf(os.Stderr, "porter up: --socket-mode %q is not an octal permission like 0660\n", *mode)
		return 2
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	var rules *broker.Rules
	if *rulesFile != "" {
		if rules, err = broker.LoadRules(*rulesFile); err != nil {
			fmt.Fprintf(os.Stderr, "porter up: %v\n", err)
			return 1
		}
	}

	root := os.Geteuid() == 0
	var uid, gid int
	if root {
		picked := *userName == ""
		if picked {
			*userName = defaultUser()
		}
		if uid, gid, err = lookupUser(*userName); err != nil {
			fmt.Fprintf(os.Stderr, "porter up: --user: %v\n", err)
			return 1
		}
		if uid == 0 {
			fmt.Fprintf(os.Stderr, "porter up: --user %s is root: porter up does not keep root after start-up; name an unprivileged user (a dedicated one such as porter is best)\n", *userName)
			return 1
		}
		log.Info("porter up: will run as", "user", *userName, "uid", uid, "gid", gid, "default", picked)
	}

	path, err := creator.Path()
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter up: %v\n", err)
		return 1
	}
	cmd := exec.Command(path)
	if root && !*creatorAsRoot {
		// As USER with CAP_NET_BIND_SERVICE, and CAP_SETPCAP for the
		// creator's own lockdown, which leaves it CAP_NET_BIND_SERVICE
		// alone. With --creator-as-root it keeps uid 0 (with that one
		// capability and the same sandbox), which owner permissions on
		// root's files then let through where seccomp and Landlock are
		// missing: prefer the default.
		cmd.SysProcAttr = lockdown.CreatorProcAttr(uid, gid)
	}
	asUser := cmd.SysProcAttr != nil
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// A process group of its own: Ctrl-C in a terminal signals the whole
	// foreground group, and the creator must not die before porter up
	// stops it ('T') and reports it lost. It still ends when porter up
	// does, however that happens: its stdin reaches end of file.
	cmd.SysProcAttr.Setpgid = true
	cr, err := creator.StartCmd(cmd)
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter up: %v\n", err)
		if errors.Is(err, syscall.EACCES) && asUser {
			fmt.Fprintf(os.Stderr, "porter up: the creator runs as %s, who cannot execute %s: install it where %s can (e.g. /usr/local/bin), or use --creator-as-root\n", *userName, path, *userName)
		}
		return 1
	}
	defer cr.Close()
	cr.SetTimeout(*creatorTimeout)

	sock := filepath.Join(*dir, broker.SocketName)
	owner := -1 // as root, the user who must be able to remove sock at exit
	if root {   // uid is not 0: refused above
		owner = uid
	}
	l, err := listenControl(*dir, sock, os.FileMode(perm), owner, gid)
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter up: %v\n", err)
		return 1
	}
	// Remove at exit only the socket this broker bound, not one a newer
	// porter up has put there meanwhile (the listener's own unlink on
	// close would remove whatever is at the path).
	l.SetUnlinkOnClose(false)
	sockID, _ := sockpath.Identify(sock)

	if root {
		if err := lockdown.Drop(uid, gid, nil); err != nil {
			l.Close()
			fmt.Fprintf(os.Stderr, "porter up: dropping privileges to %s: %v\n", *userName, err)
			return 1
		}
	}

	if unix.Access(*dir, unix.W_OK) != nil {
		log.Warn("porter up: this user may not write the socket's directory, so porter.sock stays there after exit (the next porter up replaces it); let porter up make the directory, or give it to this user",
			"dir", *dir, "uid", os.Geteuid())
	}

	srv, err := broker.New(broker.Config{
		Creator:          broker.FromCreator(cr),
		CreatorDone:      cr.Done(),
		Rules:            rules,
		Linger:           *linger,
		Backlog:          *backlog,
		TokenTTL:         *tokenTTL,
		MaxSocketsPerUID: *maxSockets,
		MaxTokensPerUID:  *maxTokens,
		MaxConnsPerUID:   *maxConns,
		Logger:           log,
	})
	if err != nil {
		l.Close()
		fmt.Fprintf(os.Stderr, "porter up: %v\n", err)
		return 1
	}
	// Catch SIGTERM before saying "serving": whoever waits for that line
	// may stop porter up at once, and it must still remove its socket.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	log.Info("porter up: serving", "socket", sock, "uid", os.Geteuid(), "gid", os.Getegid(),
		"creator", path, "creator_pid", cr.Pid(), "rules", *rulesFile, "linger", linger.String())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	status := 0
	creatorDone := cr.Done()
	for status == 0 {
		select {
		case s := <-sigs:
			log.Info("porter up: stopping", "signal", s.String())
			status = -1
		case err := <-served:
			if err != nil && !errors.Is(err, net.ErrClosed) {
				log.Error("porter up: serving failed", "err", err)
				status = 1
			} else {
				status = -1
			}
		case <-creatorDone:
			creatorDone = nil
			if *exitOnLoss {
				log.Error("porter up: the socket creator exited; exiting so the service manager can restart porter with privilege (--exit-on-creator-loss)")
				status = 3
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Shutdown closes l. It fails only when the
	// broker did not finish closing its connections and sockets in
	// time: say so, and let a stop that was otherwise clean end with
	// status 1, so a service manager sees that something hung.
	if err := srv.Shutdown(ctx); err != nil {
		log.Error("porter up: the broker did not stop cleanly", "err", err)
		if status <= 0 {
			status = 1
		}
	}
	if sockID.Is(sock) {
		if err := os.Remove(sock); err != nil {
			log.Warn("porter up: the control socket stays behind (the next porter up replaces it)", "err", err)
		}
	}
	if status < 0 {
		status = 0
	}
	return status
}

// listenControl makes dir and binds the control socket at sock; a socket
// left by a dead broker is replaced, a live broker's is not. With owner
// >= 0 (root about to drop to owner), a dir it makes is given to owner,
// as systemd's RuntimeDirectory= is to a service's User=: the broker may
// then remove its socket at exit, which root's directory would forbid
// once it has dropped privileges. So is the lock file it binds under.
func listenControl(dir, sock string, perm os.FileMode, owner, group int) (*net.UnixListener, error) {
	// made: this call created dir itself (Mkdir of the last component,
	// so a symlink put there meanwhile is not taken for ours).
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, err
	}
	made := false
	if err := os.Mkdir(dir, 0o755); err == nil {
		made = true
	} else if !errors.Is(err, os.ErrExist) {
		return nil, err
	}
	l, err := broker.Listen(sock, perm)
	if err != nil {
		return nil, err
	}
	// Only now, with the socket bound by root, is the directory given
	// away: before, its new owner could have swapped what root binds
	// and chmods there.
	if made && owner >= 0 {
		if err := os.Lchown(dir, owner, group); err != nil {
			l.Close()
			return nil, err
		}
	}
	if owner >= 0 {
		var st unix.Stat_t
		if unix.Lstat(dir, &st) == nil && int(st.Uid) == owner {
			if err := os.Lchown(sock+".lock", owner, group); err != nil && !errors.Is(err, os.ErrNotExist) {
				l.Close()
				return nil, err
			}
		}
	}
	return l, nil
}

// cloexecFrom marks every fd from first up close-on-exec: with
// close_range(2)'s CLOSE_RANGE_CLOEXEC (Linux 5.11), else one by one from
// /proc/self/fd.
func cloexecFrom(first int) error {
	if err := unix.CloseRange(uint(first), ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err == nil {
		return nil
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < first {
			continue
		}
		// The fd ReadDir read the directory with is closed by now: EBADF.
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && err != unix.EBADF {
			return os.NewSyscallError("fcntl F_SETFD", err)
		}
	}
	return nil
}

func lookupUser(name string) (uid, gid int, err error) {
	u, err := user.Lookup(name)
	if err != nil {
		if u, err = user.LookupId(name); err != nil {
			return 0, 0, fmt.Errorf("no user %q", name)
		}
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid, nil
}

// defaultUser is the user porter up runs as when --user is not given: a
// dedicated user porter when the system has one, so that no other
// program's processes may signal or trace porter's; else nobody.
func defaultUser() string {
	if _, err := user.Lookup("porter"); err == nil {
		return "porter"
	}
	return "nobody"
}

// exitUsage turns a flag parsing error into an exit status: 0 for -h.
func exitUsage(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}
