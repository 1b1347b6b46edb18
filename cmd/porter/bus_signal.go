package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/porter-ipc/porter/bus"
)

// busSignalTools are the multicast tools: emit, listen, monitor
// (issue 11). bus.go dispatches to them.
var busSignalTools = map[string]func([]string) int{
	"emit":    busEmitMain,
	"listen":  busListenMain,
	"monitor": busMonitorMain,
}

const busEmitUsage = `usage: porter bus emit [options] --path PATH --interface INTERFACE --member MEMBER [ARG...]

Publishes one multicast signal on the bus: every endpoint whose match
selects it (porter bus listen, a bus.Watcher) and that the policy lets
this one reach receives it. The ARGs are the body, as D-Bus strings
(signature "s" per arg), and the first 16 are also published as arg0,
arg1, ... for matching. Exit status: 0 once the master took the signal,
2 for a bad command line or a failure of the bus.

  porter bus emit --path /com/example/Light --interface com.example.Light --member Changed red

Options:
`

func busEmitMain(args []string) int {
	fs := flag.NewFlagSet("bus emit", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, busEmitUsage); fs.PrintDefaults() }
	pathFlag := fs.String("bus", "", busPathUsage)
	objPath := fs.String("path", "", "the signal's object `PATH` (required, e.g. /com/example/Light)")
	iface := fs.String("interface", "", "the signal's `INTERFACE` (required, e.g. com.example.Light)")
	member := fs.String("member", "", "the signal's `MEMBER` (required, e.g. Changed)")
	timeout := fs.Duration("timeout", defaultTimeout, "wait at most `DURATION` to join the bus and send (0: no limit)")
	if err := fs.Parse(args); err != nil {
		return exitUsage(err)
	}
	for _, c := range []struct {
		what, v string
		check   func(string) error
	}{{"--path", *objPath, bus.CheckPath}, {"--interface", *iface, bus.CheckInterface}, {"--member", *member, bus.CheckMember}} {
		if c.v == "" {
			fmt.Fprintf(os.Stderr, "porter bus emit: %s is required\n", c.what)
			return 2
		}
		if err := c.check(c.v); err != nil {
			fmt.Fprintf(os.Stderr, "porter bus emit: %s %q: %v\n", c.what, c.v, err)
			return 2
		}
	}
	sigArgs := fs.Args()
	if err := bus.ValidStrings(sigArgs...); err != nil {
		fmt.Fprintf(os.Stderr, "porter bus emit: %v\n", err)
		return 2
	}
	sig, body := bus.Strings(sigArgs...)
	m := &bus.Message{Path: *objPath, Interface: *iface, Member: *member, Signature: sig, Body: body}
	for i, a := range sigArgs {
		if i == bus.MaxArgs {
			break
		}
		m.Args = append(m.Args, bus.Arg{Index: uint8(i), Kind: bus.ArgString, Value: a})
	}
	ctx, cancel := timeoutContext(*timeout)
	defer cancel()
	e, err := bus.DialOptions(ctx, busPath(*pathFlag), bus.Options{Label: "porter bus emit", NoFDs: true, NoDirect: true})
	if err != nil {
		return busFailed("emit", err)
	}
	defer e.Close() // BYE comes after the signal: the master handles them in order
	if err := e.Publish(ctx, m); err != nil {
		return busFailed("emit", err)
	}
	return 0
}

const busListenUsage = `usage: porter bus listen [options] [KEY=VALUE...]

Subscribes with the match that every KEY=VALUE makes (all must hold) and
prints each multicast signal it receives, one line each:

  SENDER PATH INTERFACE.MEMBER ARG...

with the string arguments quoted (from the body when it is D-Bus strings,
else the published arg0, arg1, ...). With --json, one JSON object per
line. KEYs: path, path_namespace, interface, member, arg0 ... arg15,
sender (an address :1.N, or a name the sender owns). No KEY: every
signal. It runs until SIGINT or SIGTERM, the bus goes away, or --count
signals arrived. "porter bus listen: listening" on standard error says
the match is in place. Signals the bus could not queue for it are
reported on standard error (the bus's Lost signal).

  porter bus listen interface=com.example.Light arg0=red

Options:
`

// busSignalJSON is one signal in porter bus listen --json.
type busSignalJSON struct {
	Sender    string   `json:"sender"`
	Path      string   `json:"path"`
	Interface string   `json:"interface"`
	Member    string   `json:"member"`
	Args      []string `json:"args"`
	PID       int      `json:"pid"`
	UID       int      `json:"uid"`
}

// parseMatch turns KEY=VALUE words into the sender and the rules.
func parseMatch(words []string) (sender uint64, rules []bus.Rule, err error) {
	for _, w := range words {
		k, v, ok := strings.Cut(w, "=")
		if !ok {
			return 0, nil, fmt.Errorf("%q: want KEY=VALUE", w)
		}
		switch {
		case k == "path":
			rules = append(rules, bus.Rule{Kind: bus.RulePath, Value: v})
		case k == "path_namespace":
			rules = append(rules, bus.Rule{Kind: bus.RulePathNamespace, Value: v})
		case k == "interface":
			rules = append(rules, bus.Rule{Kind: bus.RuleInterface, Value: v})
		case k == "member":
			rules = append(rules, bus.Rule{Kind: bus.RuleMember, Value: v})
		case k == "sender" && strings.HasPrefix(v, ":"):
			a, err := bus.ParseAddress(v)
			if err != nil {
				return 0, nil, fmt.Errorf("sender=%s: %v", v, err)
			}
			sender = a
		case k == "sender":
			rules = append(rules, bus.Rule{Kind: bus.RuleSenderName, Value: v})
		case strings.HasPrefix(k, "arg"):
			n, err := strconv.Atoi(k[3:])
			if err != nil || n < 0 || n >= bus.MaxArgs || k[3:] != strconv.Itoa(n) {
				return 0, nil, fmt.Errorf("%q: want arg0 to arg%d", k, bus.MaxArgs-1)
			}
			rules = append(rules, bus.Rule{Kind: bus.RuleArg, Index: uint8(n), Value: v})
		default:
			return 0, nil, fmt.Errorf("unknown key %q (keys: path, path_namespace, interface, member, arg0..., sender)", k)
		}
	}
	if err := bus.CheckRules(rules); err != nil {
		return 0, nil, err
	}
	return sender, rules, nil
}

// noticeArgs are a signal's strings: its body when that is D-Bus
// strings, else its published args.
func noticeArgs(n *bus.Notice) []string {
	if n.Signature != "" {
		if s, err := bus.ParseStrings(n.Signature, n.Body); err == nil {
			return s
		}
	}
	out := []string{}
	for _, a := range n.Args {
		out = append(out, a.Value)
	}
	return out
}

// untilSignal is a context that ends on SIGINT or SIGTERM.
func untilSignal() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}

func busListenMain(args []string) int {
	fs := flag.NewFlagSet("bus listen", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, busListenUsage); fs.PrintDefaults() }
	pathFlag := fs.String("bus", "", busPathUsage)
	asJSON := fs.Bool("json", false, "print one JSON object per line")
	count := fs.Int("count", 0, "exit after `N` signals (0: no limit)")
	timeout := fs.Duration("timeout", defaultTimeout, "join the bus and add the match within `DURATION` (0: no limit)")
	if err := fs.Parse(args); err != nil {
		return exitUsage(err)
	}
	sender, rules, err := parseMatch(fs.Args())
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter bus listen: %v\n", err)
		return 2
	}
	run, stop := untilSignal()
	defer stop()
	ctx, cancel := timeoutContext(*timeout)
	defer cancel()
	e, err := bus.DialOptions(ctx, busPath(*pathFlag), bus.Options{Label: "porter bus listen", NoFDs: true, NoDirect: true})
	if err != nil {
		return busFailed("listen", err)
	}
	defer e.Close()
	w, err := e.Watch(ctx, sender, rules...)
	if err != nil {
		return busFailed("listen", err)
	}
	lost, err := e.Watch(ctx, bus.AddrBus, bus.Rule{Kind: bus.RuleInterface, Value: bus.PorterInterface}, bus.Rule{Kind: bus.RuleMember, Value: bus.MemberLost})
	if err != nil {
		return busFailed("listen", err)
	}
	fmt.Fprintln(os.Stderr, "porter bus listen: listening")
	enc := json.NewEncoder(os.Stdout)
	for seen := 0; *count == 0 || seen < *count; {
		select {
		case <-run.Done():
			return 0
		case n, ok := <-lost.C:
			if ok {
				fmt.Fprintf(os.Stderr, "porter bus listen: the bus could not queue %d signals for us (%d in all)\n", bodyU64(n.Body, 0), bodyU64(n.Body, 8))
				n.Close()
			}
		case n, ok := <-w.C:
			if !ok {
				fmt.Fprintln(os.Stderr, "porter bus listen: the bus went away")
				return 1
			}
			if n.Sender == bus.AddrBus && n.Member == bus.MemberLost {
				n.Close() // reported from the other watcher
				continue
			}
			seen++
			a := noticeArgs(n)
			n.Close()
			if *asJSON {
				enc.Encode(busSignalJSON{Sender: addrString(n.Sender), Path: n.Path, Interface: n.Interface, Member: n.Member,
					Args: a, PID: n.Cred.PID, UID: n.Cred.UID})
				continue
			}
			q := make([]string, len(a))
			for i, s := range a {
				q[i] = strconv.Quote(s)
			}
			line := addrString(n.Sender) + " " + n.Path + " " + n.Interface + "." + n.Member
			if len(q) > 0 {
				line += " " + strings.Join(q, " ")
			}
			fmt.Println(line)
		}
	}
	return 0
}

// bodyU64 is the little-endian u64 at off of b, or 0.
func bodyU64(b []byte, off int) uint64 {
	if len(b) < off+8 {
		return 0
	}
	var v uint64
	for i := 7; i >= 0; i-- {
		v = v<<8 | uint64(b[off+i])
	}
	return v
}

const busMonitorUsage = `usage: porter bus monitor [options]

Becomes the bus's monitor and prints every frame the master handles for
the other endpoints, live, one line each:

  TIME FROM -> TO TYPE serial=N [reply=N] [PATH INTERFACE.MEMBER] [dest=NAME] [nfds=N] [memfd] [refused]

TIME is CLOCK_MONOTONIC seconds when the master handled the frame, FROM
and TO the addresses (:bus is the master; - is a multicast, or an
endpoint not yet joined). With --json,
one JSON object per line. While a monitor is attached the bus routes
every call through the master (its direct channels are drained first),
so the monitor sees everything; it runs until SIGINT or SIGTERM or the
bus goes away. The bus's policy says who may: by default root and the
uid that runs porter bus up; anyone else gets DENIED.

Options:
`

// busCopyJSON is one frame in porter bus monitor --json.
type busCopyJSON struct {
	Time        uint64 `json:"time_ns"`
	From        string `json:"from"`
	To          string `json:"to"`
	Type        string `json:"type"`
	Serial      uint64 `json:"serial"`
	ReplySerial uint64 `json:"reply_serial,omitempty"`
	Path        string `json:"path,omitempty"`
	Interface   string `json:"interface,omitempty"`
	Member      string `json:"member,omitempty"`
	DestName    string `json:"dest_name,omitempty"`
	NFDs        uint16 `json:"nfds,omitempty"`
	Memfd       bool   `json:"memfd,omitempty"`
	Refused     bool   `json:"refused,omitempty"`
	BodyLen     int    `json:"body_len"`
}

func copyJSON(c *bus.Copy) busCopyJSON {
	addr := func(a uint64) string {
		if a == bus.AddrNone {
			return "-" // a joining endpoint's HELLO; a multicast
		}
		return addrString(a)
	}
	return busCopyJSON{Time: c.Info.Time, From: addr(c.Info.From), To: addr(c.Info.To), Type: c.Type.String(),
		Serial: c.Serial, ReplySerial: c.ReplySerial, Path: c.Text(bus.FieldPath), Interface: c.Text(bus.FieldInterface),
		Member: c.Text(bus.FieldMember), DestName: c.Text(bus.FieldDestName), NFDs: c.Info.NFDs,
		Memfd: c.Info.Flags&bus.MonitorMemfd != 0, Refused: c.Info.Flags&bus.MonitorRefused != 0, BodyLen: len(c.Body)}
}

func busMonitorMain(args []string) int {
	fs := flag.NewFlagSet("bus monitor", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, busMonitorUsage); fs.PrintDefaults() }
	pathFlag := fs.String("bus", "", busPathUsage)
	asJSON := fs.Bool("json", false, "print one JSON object per line")
	count := fs.Int("count", 0, "exit after `N` frames (0: no limit)")
	timeout := fs.Duration("timeout", defaultTimeout, "join the bus and become its monitor within `DURATION` (0: no limit)")
	if err := fs.Parse(args); err != nil {
		return exitUsage(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "porter bus monitor: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	run, stop := untilSignal()
	defer stop()
	ctx, cancel := timeoutContext(*timeout)
	defer cancel()
	e, err := bus.DialOptions(ctx, busPath(*pathFlag), bus.Options{Label: "porter bus monitor", NoFDs: true, NoDirect: true})
	if err != nil {
		return busFailed("monitor", err)
	}
	defer e.Close()
	mon, err := e.Monitor(ctx)
	if err != nil {
		if bus.CodeOf(err) == bus.CodeDenied {
			fmt.Fprintf(os.Stderr, "porter bus monitor: DENIED: %v (the bus's policy decides who may monitor; porter bus up lets root and its own uid, uid %d is neither)\n", err, os.Geteuid())
			return 2
		}
		return busFailed("monitor", err)
	}
	fmt.Fprintln(os.Stderr, "porter bus monitor: monitoring")
	enc := json.NewEncoder(os.Stdout)
	var lost uint64
	for seen := 0; *count == 0 || seen < *count; seen++ {
		var c *bus.Copy
		var ok bool
		select {
		case <-run.Done():
			return 0
		case c, ok = <-mon.C:
		}
		if !ok {
			fmt.Fprintln(os.Stderr, "porter bus monitor: the bus went away")
			return 1
		}
		if l := e.Lost() + mon.Dropped(); l != lost {
			fmt.Fprintf(os.Stderr, "porter bus monitor: %d frames missed (queue full)\n", l-lost)
			lost = l
		}
		j := copyJSON(c)
		if *asJSON {
			enc.Encode(j)
			continue
		}
		line := fmt.Sprintf("%d.%09d %s -> %s %s serial=%d", j.Time/1e9, j.Time%1e9, j.From, j.To, j.Type, j.Serial)
		if j.ReplySerial != 0 {
			line += fmt.Sprintf(" reply=%d", j.ReplySerial)
		}
		if j.Path != "" || j.Member != "" {
			line += " " + j.Path + " " + j.Interface + "." + j.Member
		}
		if j.DestName != "" {
			line += " dest=" + j.DestName
		}
		if j.NFDs != 0 {
			line += fmt.Sprintf(" nfds=%d", j.NFDs)
		}
		if j.Memfd {
			line += " memfd"
		}
		if j.Refused {
			line += " refused"
		}
		fmt.Println(line)
	}
	return 0
}
