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
)

func init() {
	commands["up"] = command{"run the socket broker (the daemon)", upMain}
}

const upUsage = `usage: porter up [options]

Runs porter's socket broker in the foreground. It starts porter-creator,
the small privileged helper that binds sockets, then (as root) drops to an
unprivileged user and serves requests for sockets on a Unix control socket.
No config file is needed.

  porter up                        # as root: /run/porter/porter.sock, runs as nobody
  porter run --listen tcp://0.0.0.0:80 -- ./mydaemon

Access: without --rules everyone may ask for ports 1024 and above and
nobody for lower ports. A rules file lists who may have what:

  allow uid=www-data proto=tcp port=80,443
  allow gid=bind port=53

As root the creator runs as USER with only CAP_NET_BIND_SERVICE, and the
broker runs as USER with no capabilities. If the creator dies the broker
keeps serving the sockets it holds and refuses new ones; restart porter up
(or use --exit-on-creator-loss under a service manager) to get it back.

Options:
`

func upMain(args []string) int {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, upUsage); fs.PrintDefaults() }
	dir := fs.String("dir", broker.DefaultDir(), "directory of the control socket `porter.sock`")
	userName := fs.String("user", "", "as root, the `USER` to run as after starting the creator (default: porter if that user exists, else nobody)")
	rulesFile := fs.String("rules", "", "rules `FILE` saying which uids/gids may have which ports (default: ports >= 1024 for everyone)")
	linger := fs.Duration("linger", 0, "keep a socket this long after its last holder lets go, so a restarted daemon gets the same one")
	backlog := fs.Int("backlog", broker.DefaultBacklog, "listen(2) backlog of TCP sockets")
	mode := fs.String("socket-mode", "0666", "permissions of the control socket (octal)")
	tokenTTL := fs.Duration("token-ttl", broker.DefaultTokenTTL, "how long a prepared token waits to be picked up")
	maxSockets := fs.Int("max-sockets", broker.DefaultMaxSocketsPerUID, "socket references per uid (-1: unlimited)")
	maxTokens := fs.Int("max-tokens", broker.DefaultMaxTokensPerUID, "pending tokens per uid (-1: unlimited)")
	maxConns := fs.Int("max-conns", broker.DefaultMaxConnsPerUID, "open client connections per uid (-1: unlimited)")
	exitOnLoss := fs.Bool("exit-on-creator-loss", false, "exit (status 3) when the creator dies, so a service manager restarts porter with privilege")
	creatorAsRoot := fs.Bool("creator-as-root", false, "as root, keep the creator root instead of USER with CAP_NET_BIND_SERVICE (for kernels without ambient capabilities)")
	verbose := fs.Bool("v", false, "log every request (debug level)")
	if err := fs.Parse(args); err != nil {
		return exitUsage(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "porter up: unexpected argument %q\n", fs.Arg(0))
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
		// alone; as root (--creator-as-root) it ends the same way.
		cmd.SysProcAttr = lockdown.CreatorProcAttr(uid, gid)
	}
	cr, err := creator.StartCmd(cmd)
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter up: %v\n", err)
		if errors.Is(err, syscall.EACCES) && cmd.SysProcAttr != nil {
			fmt.Fprintf(os.Stderr, "porter up: the creator runs as %s, who cannot execute %s: install it where %s can (e.g. /usr/local/bin), or use --creator-as-root\n", *userName, path, *userName)
		}
		return 1
	}
	defer cr.Close()

	sock := filepath.Join(*dir, broker.SocketName)
	l, err := listenControl(*dir, sock, os.FileMode(perm))
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter up: %v\n", err)
		return 1
	}

	if root {
		if err := lockdown.Drop(uid, gid, nil); err != nil {
			l.Close()
			fmt.Fprintf(os.Stderr, "porter up: dropping privileges to %s: %v\n", *userName, err)
			return 1
		}
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
	log.Info("porter up: serving", "socket", sock, "uid", os.Geteuid(), "gid", os.Getegid(),
		"creator", path, "creator_pid", cr.Pid(), "rules", *rulesFile, "linger", linger.String())

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
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
	srv.Shutdown(ctx)
	os.Remove(sock) // works when the directory is ours; a leftover is replaced at the next start
	if status < 0 {
		status = 0
	}
	return status
}

// listenControl makes dir and binds the control socket at sock; a socket
// left by a dead broker is replaced, a live broker's is not.
func listenControl(dir, sock string, perm os.FileMode) (*net.UnixListener, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return broker.Listen(sock, perm)
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
