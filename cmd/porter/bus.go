package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/porter-ipc/porter/bus"
)

func init() {
	commands["bus"] = command{"a local message bus: up, names, call, serve", busMain}
}

const busUsage = `usage: porter bus up [PATH]
       porter bus names [--json]
       porter bus call [options] ADDR|NAME MEMBER [ARG...]
       porter bus serve [options] NAME (--echo | -- PROG [ARG...])
       porter bus emit [options] --path P --interface I --member M [ARG...]
       porter bus listen [options] [KEY=VALUE...]
       porter bus monitor [options]

porter's local message bus: a master (porter bus up) authenticates the
programs that join by their credentials, gives each an address (:1.N),
keeps the registry of well-known names (com.example.echo) and introduces
callers to services on direct channels. The other tools poke a bus
from a shell, in the spirit of busctl.

  porter bus up /tmp/bus &                  # then: export PORTER_BUS=/tmp/bus
  porter bus serve com.example.echo --echo &
  porter bus call com.example.echo Ping hello world
  porter bus names

Every tool finds the bus at --bus PATH, else $PORTER_BUS, else porter bus
up's default: $XDG_RUNTIME_DIR/porter/bus for a normal user,
/run/porter/bus for root. Run 'porter bus TOOL --help' for a tool's
options. docs/bus.md is the guide, docs/protocol-bus.md the protocol.
`

func busMain(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, busUsage)
		return 2
	}
	if tool, ok := busSignalTools[args[0]]; ok {
		return tool(args[1:])
	}
	switch args[0] {
	case "up":
		return busUpMain(args[1:])
	case "names":
		return busNamesMain(args[1:])
	case "call":
		return busCallMain(args[1:])
	case "serve":
		return busServeMain(args[1:])
	case "-h", "--help", "-help", "help":
		fmt.Fprint(os.Stderr, busUsage)
		return 0
	}
	fmt.Fprintf(os.Stderr, "porter bus: unknown tool %q (tools: up, names, call, serve, emit, listen, monitor)\n", args[0])
	return 2
}

// busEnv names the bus for every tool when --bus is not given.
const busEnv = "PORTER_BUS"

const busPathUsage = "the bus socket `PATH` (default $PORTER_BUS, else porter bus up's default)"

// busPath is the bus the tools use: flag, else $PORTER_BUS, else the
// default (bus.DefaultPath reads $PORTER_BUS itself).
func busPath(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	return bus.DefaultPath()
}

const busUpUsage = `usage: porter bus up [--bus PATH] [PATH] [--dbus SOCK]

Creates a bus at PATH (or --bus, else $PORTER_BUS, else
$XDG_RUNTIME_DIR/porter/bus for a normal user, /run/porter/bus for root)
and serves it in the foreground as its master until SIGTERM or SIGINT;
then it tells every endpoint the bus is shutting down and removes the
socket. The directory is made (mode 0755) if it is missing. No config
file: the socket is mode 0666 and the default policy decides:

  - anyone may join; the master verifies each endpoint's pid, uid and gid;
  - names are first come, first served (org.freedesktop.DBus, porter and
    porter.* are the bus's own and refused);
  - an endpoint may call another of the same uid, and root may call
    everyone; replies always go back;
  - only root and the bus's own uid may monitor.

It logs one line, "porter bus up: serving", with the path and the line to
export (PORTER_BUS=PATH), which is also printed on standard output.

With --dbus SOCK the master also speaks D-Bus on the stream socket SOCK
(docs/dbus.md): busctl, dbus-send, gdbus and every libdbus, sd-bus,
GDBus or godbus program join the same bus, with the same names and policy.
It then also prints DBUS_SESSION_BUS_ADDRESS=unix:path=SOCK, the line to
export for them:

  porter bus up /tmp/demo-bus --dbus /tmp/demo-dbus &
  export DBUS_SESSION_BUS_ADDRESS=unix:path=/tmp/demo-dbus
  busctl --user list

Options:
`

func busUpMain(args []string) int {
	fs := flag.NewFlagSet("bus up", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, busUpUsage); fs.PrintDefaults() }
	pathFlag := fs.String("bus", "", busPathUsage)
	dbusFlag := fs.String("dbus", "", "also serve D-Bus clients on the stream socket `SOCK` (docs/dbus.md)")
	if err := fs.Parse(args); err != nil {
		return exitUsage(err)
	}
	path := busPath(*pathFlag)
	if fs.NArg() >= 1 {
		// PATH may come before the flags: porter bus up PATH --dbus SOCK.
		path = fs.Arg(0)
		if err := fs.Parse(fs.Args()[1:]); err != nil {
			return exitUsage(err)
		}
		if fs.NArg() > 0 {
			fmt.Fprintf(os.Stderr, "porter bus up: unexpected argument %q\n", fs.Arg(0))
			return 2
		}
	}
	if abs, err := filepath.Abs(path); err == nil {
		path = abs // the export line must name the bus from any directory
	}
	dbusPath := *dbusFlag
	if dbusPath != "" {
		if abs, err := filepath.Abs(dbusPath); err == nil {
			dbusPath = abs
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		fmt.Fprintf(os.Stderr, "porter bus up: %v\n", err)
		return 1
	}
	m, err := bus.Listen(path, bus.DefaultPolicy(os.Geteuid()))
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter bus up: %v\n", err)
		return 1
	}
	if dbusPath != "" {
		err := os.MkdirAll(filepath.Dir(dbusPath), 0o755)
		if err == nil {
			err = m.ListenDBus(dbusPath)
		}
		if err != nil {
			m.Close()
			fmt.Fprintf(os.Stderr, "porter bus up: --dbus: %v\n", err)
			return 1
		}
	}
	// Catch the signals before saying "serving": whoever waits for that
	// line may stop the master at once, and it must still remove its
	// socket.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	served := make(chan error, 1)
	go func() { served <- m.Serve() }()
	if a := m.DBusAddr(); a != "" {
		log.Info("porter bus up: serving", "bus", m.Addr(), "dbus", a, "uid", os.Geteuid(), "export", busEnv+"="+m.Addr()+" DBUS_SESSION_BUS_ADDRESS="+a)
		fmt.Printf("%s=%s\nDBUS_SESSION_BUS_ADDRESS=%s\n", busEnv, m.Addr(), a)
	} else {
		log.Info("porter bus up: serving", "bus", m.Addr(), "uid", os.Geteuid(), "export", busEnv+"="+m.Addr())
		fmt.Printf("%s=%s\n", busEnv, m.Addr())
	}
	status := 0
	select {
	case s := <-sigs:
		log.Info("porter bus up: stopping", "signal", s.String())
	case err := <-served:
		log.Error("porter bus up: serving failed", "err", err)
		status = 1
	}
	if err := m.Close(); err != nil {
		log.Error("porter bus up: closing", "err", err)
		status = 1
	}
	if status == 0 {
		if err := <-served; err != nil {
			log.Error("porter bus up: serving failed", "err", err)
			status = 1
		}
	}
	return status
}

const busNamesUsage = `usage: porter bus names [--bus PATH] [--json] [--timeout DURATION]

Lists every address on the bus, but its own: ADDRESS (:1.N), NAMES (the
well-known names it owns, comma-separated; a name it waits in the queue
for is marked "(queued)"; "-" for none), PID and UID as the master
verified them, and LABEL (what the endpoint called itself, usually its
program's name). With --json, a JSON array of objects.

Options:
`

// busNameJSON is one address in porter bus names --json.
type busNameJSON struct {
	Address string   `json:"address"`
	Primary string   `json:"primary"`
	Names   []string `json:"names"`
	Queued  []string `json:"queued"`
	PID     uint32   `json:"pid"`
	UID     uint32   `json:"uid"`
	GID     uint32   `json:"gid"`
	Label   string   `json:"label"`
	Monitor bool     `json:"monitor,omitempty"`
}

func busNamesMain(args []string) int {
	fs := flag.NewFlagSet("bus names", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, busNamesUsage); fs.PrintDefaults() }
	pathFlag := fs.String("bus", "", busPathUsage)
	asJSON := fs.Bool("json", false, "print JSON")
	timeout := fs.Duration("timeout", defaultTimeout, "wait at most `DURATION` to join the bus and for the list (0: no limit)")
	if err := fs.Parse(args); err != nil {
		return exitUsage(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "porter bus names: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	ctx, cancel := timeoutContext(*timeout)
	defer cancel()
	e, err := bus.DialOptions(ctx, busPath(*pathFlag), bus.Options{Label: "porter bus names", NoFDs: true, NoDirect: true})
	if err != nil {
		busFailed("names", err)
		return 1
	}
	defer e.Close()
	ids, err := e.List(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter bus names: %v\n", err)
		return 1
	}
	if *asJSON {
		out := []busNameJSON{}
		for _, id := range ids {
			if id.Primary == e.Address() {
				continue
			}
			out = append(out, busNameJSON{Address: addrString(id.Address), Primary: addrString(id.Primary),
				Names: nonNil(id.Owned), Queued: nonNil(id.Queued), PID: id.PID, UID: id.UID, GID: id.GID,
				Label: id.Label, Monitor: id.Flags&bus.IdentityMonitor != 0})
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return 1
		}
		return 0
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tNAMES\tPID\tUID\tLABEL")
	for _, id := range ids {
		if id.Primary == e.Address() {
			continue
		}
		names := append([]string{}, id.Owned...)
		for _, q := range id.Queued {
			names = append(names, q+"(queued)")
		}
		n := strings.Join(names, ",")
		if n == "" {
			n = "-"
		}
		label := id.Label
		if id.Flags&bus.IdentityMonitor != 0 {
			label += " (monitor)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", addrString(id.Address), n, id.PID, id.UID, label)
	}
	tw.Flush()
	return 0
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// addrString prints an address as the bus does: ":1.N".
func addrString(a uint64) string { return bus.FormatAddress(a) }

// timeoutContext is a context with d as its deadline, or none for d <= 0.
func timeoutContext(d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(context.Background())
	}
	return context.WithTimeout(context.Background(), d)
}

const busCallUsage = `usage: porter bus call [options] ADDR|NAME MEMBER [ARG...]

Calls MEMBER on the endpoint at address ADDR (:1.N) or owning the
well-known NAME, with the ARGs as D-Bus strings (signature "s" per arg),
and prints the reply's strings one per line (a string that ends with a
newline, such as a program's output, gets no second one; a reply whose
body is opaque bytes, signature "", is written out as it is). Options
come before ADDR or NAME.

  porter bus call com.example.echo Ping hello world

Exit status: 0 for a reply; 1 when the callee answered with an error (its
name and text on standard error); 2 for a bad command line or a failure
of the bus, printed with its code (NAME_HAS_NO_OWNER: nobody owns NAME;
DENIED: the policy refused; PEER_GONE: the callee left with the call
pending; TIMEOUT: no answer within --timeout; ...).

Options:
`

func busCallMain(args []string) int {
	fs := flag.NewFlagSet("bus call", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, busCallUsage); fs.PrintDefaults() }
	pathFlag := fs.String("bus", "", busPathUsage)
	objPath := fs.String("path", "", "the object `PATH` to call (optional, e.g. /com/example/Echo)")
	iface := fs.String("interface", "", "the `INTERFACE` of MEMBER (optional, e.g. com.example.Echo)")
	timeout := fs.Duration("timeout", defaultTimeout, "wait at most `DURATION` for the whole call, joining included (0: no limit)")
	routed := fs.Bool("routed", false, "send through the master instead of a direct channel (to compare, or to debug)")
	if err := fs.Parse(args); err != nil {
		return exitUsage(err)
	}
	if fs.NArg() < 2 {
		fmt.Fprintf(os.Stderr, "porter bus call: want ADDR|NAME and MEMBER\n")
		fs.Usage()
		return 2
	}
	dest, member, callArgs := fs.Arg(0), fs.Arg(1), fs.Args()[2:]
	for _, c := range []struct {
		what, v string
		check   func(string) error
	}{{"MEMBER", member, bus.CheckMember}, {"--path", *objPath, bus.CheckPath}, {"--interface", *iface, bus.CheckInterface}} {
		if c.v == "" {
			continue
		}
		if err := c.check(c.v); err != nil {
			fmt.Fprintf(os.Stderr, "porter bus call: %s %q: %v\n", c.what, c.v, err)
			return 2
		}
	}
	destErr := bus.CheckName(dest)
	if strings.HasPrefix(dest, ":") {
		_, destErr = bus.ParseAddress(dest)
	}
	if destErr != nil {
		fmt.Fprintf(os.Stderr, "porter bus call: %q is neither an address (:1.N) nor a name (com.example.x): %v\n", dest, destErr)
		return 2
	}
	if err := bus.ValidStrings(callArgs...); err != nil {
		fmt.Fprintf(os.Stderr, "porter bus call: %v\n", err)
		return 2
	}
	ctx, cancel := timeoutContext(*timeout)
	defer cancel()
	e, err := bus.DialOptions(ctx, busPath(*pathFlag), bus.Options{Label: "porter bus call", NoFDs: true, Routed: *routed})
	if err != nil {
		return busFailed("call", err)
	}
	defer e.Close()
	sig, body := bus.Strings(callArgs...)
	reply, err := e.Call(ctx, dest, &bus.Message{Path: *objPath, Interface: *iface, Member: member, Signature: sig, Body: body})
	if err != nil {
		var ce *bus.CallError
		if errors.As(err, &ce) {
			fmt.Fprintf(os.Stderr, "porter bus call: %s: %s\n", ce.Name, ce.Text)
			return 1
		}
		return busFailed("call", err)
	}
	for _, f := range reply.Files {
		f.Close() // we said NoFDs; nothing should arrive
	}
	if reply.Signature == "" {
		os.Stdout.Write(reply.Body)
		return 0
	}
	out, err := bus.ParseStrings(reply.Signature, reply.Body)
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter bus call: the reply (signature %q) is not strings: %v\n", reply.Signature, err)
		return 2
	}
	for _, s := range out {
		if !strings.HasSuffix(s, "\n") { // a program's output has its newline already
			s += "\n"
		}
		os.Stdout.WriteString(s)
	}
	return 0
}

// busFailed prints a failure of the bus, with the protocol's code first
// when it has one, and returns 2.
func busFailed(tool string, err error) int {
	c := bus.CodeOf(err)
	switch {
	case c != 0 && !strings.Contains(err.Error(), c.String()):
		fmt.Fprintf(os.Stderr, "porter bus %s: %s: %v\n", tool, c, err)
	case c != 0: // a protocol code's errno (NAME_HAS_NO_OWNER is ENOENT) is no dial failure
		fmt.Fprintf(os.Stderr, "porter bus %s: %v\n", tool, err)
	case errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED):
		fmt.Fprintf(os.Stderr, "porter bus %s: %v (is porter bus up running there? --bus or $%s names the bus)\n", tool, err, busEnv)
	case errors.Is(err, context.DeadlineExceeded):
		fmt.Fprintf(os.Stderr, "porter bus %s: TIMEOUT: %v (--timeout sets the wait)\n", tool, err)
	default:
		fmt.Fprintf(os.Stderr, "porter bus %s: %v\n", tool, err)
	}
	return 2
}

const busServeUsage = `usage: porter bus serve [options] NAME --echo
       porter bus serve [options] NAME -- PROG [ARG...]

Owns the well-known NAME on the bus and answers every call to it until
SIGTERM or SIGINT (or until the bus goes away). A NAME that another
endpoint owns is an error: serve does not queue for it.

    --echo           replies with the call's signature and body unchanged.
    -- PROG ARG...   runs PROG ARG... MEMBER CALLARG... for each call (the
                     call's args must be D-Bus strings, else the reply is
                     the error org.freedesktop.DBus.Error.InvalidArgs), with
                     standard input /dev/null and at most --timeout to run,
                     and replies one string: its standard output. A PROG
                     that exits non-zero or is killed at the timeout gives
                     the error org.freedesktop.DBus.Error.Failed with its
                     standard error as the text.

  porter bus serve com.example.date -- /bin/sh -c 'date -u; echo "$@"' date

Options may come before or after NAME.

Options:
`

func busServeMain(args []string) int {
	fs := flag.NewFlagSet("bus serve", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, busServeUsage); fs.PrintDefaults() }
	pathFlag := fs.String("bus", "", busPathUsage)
	echo := fs.Bool("echo", false, "answer each call with its own signature and body")
	timeout := fs.Duration("timeout", defaultTimeout, "join within `DURATION`, and give PROG at most that long per call (0: no limit)")
	var prog []string
	if i := indexOf(args, "--"); i >= 0 {
		args, prog = args[:i], args[i+1:]
	}
	// Options before and after NAME: parse, take NAME, parse the rest.
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return exitUsage(err)
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	switch {
	case len(pos) != 1:
		fmt.Fprintf(os.Stderr, "porter bus serve: want one NAME, got %q\n", pos)
		return 2
	case *echo == (len(prog) > 0):
		fmt.Fprintf(os.Stderr, "porter bus serve: want either --echo or -- PROG [ARG...]\n")
		return 2
	}
	name := pos[0]
	if err := bus.CheckName(name); err != nil {
		fmt.Fprintf(os.Stderr, "porter bus serve: NAME %q: %v\n", name, err)
		return 2
	}
	var handler bus.Handler
	if *echo {
		handler = func(ctx context.Context, c *bus.Call) (*bus.Message, error) {
			return &bus.Message{Signature: c.Signature, Body: c.Body}, nil
		}
	} else {
		if _, err := exec.LookPath(prog[0]); err != nil {
			fmt.Fprintf(os.Stderr, "porter bus serve: %v\n", err)
			return 2
		}
		handler = progHandler(prog, *timeout)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)

	ctx, cancel := timeoutContext(*timeout)
	defer cancel()
	path := busPath(*pathFlag)
	e, err := bus.DialOptions(ctx, path, bus.Options{Label: "porter bus serve", NoFDs: true, Handler: func(ctx context.Context, c *bus.Call) (*bus.Message, error) {
		for _, f := range c.Files {
			f.Close() // we said NoFDs; nothing should arrive
		}
		return handler(ctx, c)
	}})
	if err != nil {
		return busFailed("serve", err)
	}
	defer e.Close()
	v, err := e.RequestName(ctx, name, bus.NameDoNotQueue)
	if err != nil {
		return busFailed("serve", err)
	}
	switch v {
	case bus.NamePrimaryOwner, bus.NameAlreadyOwner:
	case bus.NameExists:
		fmt.Fprintf(os.Stderr, "porter bus serve: %s is taken (EXISTS): another endpoint owns it ('porter bus names' shows which)\n", name)
		return 1
	default:
		fmt.Fprintf(os.Stderr, "porter bus serve: %s: not owned (REQUEST_NAME answered %d)\n", name, v)
		return 1
	}
	// NameLost (unicast: we own no queue place, so it means the name is
	// gone) ends the service; the watch's channel closes when the bus
	// connection ends, which ends it too.
	lost, err := e.Watch(ctx, bus.AddrBus, bus.Rule{Kind: bus.RuleInterface, Value: "org.freedesktop.DBus"},
		bus.Rule{Kind: bus.RuleMember, Value: "NameLost"}, bus.Rule{Kind: bus.RuleArg, Value: name})
	if err != nil {
		return busFailed("serve", err)
	}
	log.Info("porter bus serve: serving", "name", name, "address", addrString(e.Address()), "bus", path)
	for {
		select {
		case s := <-sigs:
			log.Info("porter bus serve: stopping", "signal", s.String())
			return 0
		case n, ok := <-lost.C:
			if !ok {
				log.Error("porter bus serve: the bus connection ended")
				return 1
			}
			if n.Sender == bus.AddrBus {
				log.Error("porter bus serve: lost the name", "name", name)
				return 1
			}
		}
	}
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// maxProgOutput bounds what PROG may print: the reply must fit one frame.
const maxProgOutput = 60 << 10

// progHandler answers a call by running prog with the member and the
// call's string args appended.
func progHandler(prog []string, timeout time.Duration) bus.Handler {
	return func(ctx context.Context, c *bus.Call) (*bus.Message, error) {
		args, err := bus.ParseStrings(c.Signature, c.Body)
		if err != nil {
			return nil, &bus.CallError{Name: "org.freedesktop.DBus.Error.InvalidArgs", Text: err.Error()}
		}
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		argv := append(append(append([]string{}, prog[1:]...), c.Member), args...)
		cmd := exec.CommandContext(ctx, prog[0], argv...)
		var stdout, stderr limitedBuffer
		stdout.max, stderr.max = maxProgOutput, 4<<10
		cmd.Stdout, cmd.Stderr = &stdout, &stderr // stdin: /dev/null
		cmd.WaitDelay = time.Second               // a child that keeps the pipes open does not hold the reply
		err = cmd.Run()
		if ctx.Err() != nil {
			return nil, &bus.CallError{Name: "org.freedesktop.DBus.Error.Failed", Text: fmt.Sprintf("%s: killed after %v: %s", prog[0], timeout, stderr.text())}
		}
		if err != nil {
			text := stderr.text()
			if text == "" {
				text = err.Error()
			}
			return nil, &bus.CallError{Name: "org.freedesktop.DBus.Error.Failed", Text: text}
		}
		if stdout.over {
			return nil, &bus.CallError{Name: "org.freedesktop.DBus.Error.LimitsExceeded", Text: fmt.Sprintf("%s printed more than %d bytes", prog[0], maxProgOutput)}
		}
		out := stdout.String()
		if err := bus.ValidStrings(out); err != nil {
			return nil, &bus.CallError{Name: "org.freedesktop.DBus.Error.Failed", Text: fmt.Sprintf("%s's output is not a D-Bus string: %v", prog[0], err)}
		}
		sig, body := bus.Strings(out)
		return &bus.Message{Signature: sig, Body: body}, nil
	}
}

// limitedBuffer keeps the first max bytes written to it and notes that
// more came; writes never fail, so the program is not killed by EPIPE.
type limitedBuffer struct {
	bytes.Buffer
	max  int
	over bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	room := b.max - b.Len()
	if len(p) > room {
		b.over = true
		b.Buffer.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return b.Buffer.Write(p)
}

// text is the buffer as one line of text for an error message.
func (b *limitedBuffer) text() string {
	return strings.TrimSpace(strings.ToValidUTF8(strings.ReplaceAll(b.String(), "\x00", ""), "?"))
}

var _ io.Writer = (*limitedBuffer)(nil)
