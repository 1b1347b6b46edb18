package dbusscenario

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/porter-ipc/porter/internal/dbuspeer"
)

// A scenario drives real D-Bus clients through one behaviour of a bus and
// writes what they printed into the session's transcript.
type scenario struct {
	name string
	// nobody says the scenario runs a second time as the user nobody
	// (credentials, calls across users), as "NAME.nobody".
	nobody bool
	run    func(s *session)
	// onlyNobody says it runs only as nobody (what root may do and
	// nobody may not).
	onlyNobody bool
}

var scenarios = []scenario{
	{name: "list", nobody: true, run: scenarioList},
	{name: "call", nobody: true, run: scenarioCall},
	{name: "errors", nobody: false, run: scenarioErrors},
	{name: "queue", nobody: false, run: scenarioQueue},
	{name: "disconnect", nobody: false, run: scenarioDisconnect},
	{name: "broadcast", nobody: false, run: scenarioBroadcast},
	{name: "wait", nobody: false, run: scenarioWait},
	{name: "fd", nobody: true, run: scenarioFD},
	{name: "driver", nobody: true, run: scenarioDriver},
	{name: "monitor", nobody: true, run: scenarioMonitorDenied, onlyNobody: true},
}

// scenarioMonitorDenied: a user other than root and the bus's own may not
// become a monitor. (Asking for a name the policy forbids, as nobody, is a
// later step: the reference's policy lets everyone own every name.)
func scenarioMonitorDenied(s *session) {
	// A bus that lets nobody monitor shows "exit 124": busctl monitored
	// until timeout(1) ended it.
	s.timeoutShows = true
	s.run(func(*session, string, string) []string { return nil }, s.busctl("monitor"))
}

const (
	driverDest = "org.freedesktop.DBus"
	driverPath = "/org/freedesktop/DBus"
)

// busctl, dbusSend and gdbusCall spell each client's command line with the
// session's address.
func (s *session) busctl(args ...string) []string {
	return append([]string{"busctl", "--address=" + s.addr}, args...)
}

func (s *session) dbusSend(args ...string) []string {
	return append([]string{"dbus-send", "--bus=" + s.addr}, args...)
}

func (s *session) gdbus(cmd string, args ...string) []string {
	return append([]string{"gdbus", cmd, "--address", s.addr}, args...)
}

// run is client with the title spelled from argv without the address.
func (s *session) run(show func(*session, string, string) []string, argv []string) {
	s.t.Helper()
	var title []string
	for _, a := range argv {
		if a == s.addr || strings.HasSuffix(a, "="+s.addr) || a == "--address" {
			continue
		}
		if strings.ContainsAny(a, " '\"") || a == "" {
			a = strconv.Quote(a)
		}
		title = append(title, a)
	}
	s.client(strings.Join(title, " "), show, argv...)
}

// showStrings shows dbus-send's print-reply with the strings of each
// array sorted, and gdbus's one-line array tuple "(['a', 'b'],)" sorted:
// the order of ListNames is not defined.
func showStrings(s *session, stdout, _ string) []string {
	lines := splitLines(stdout)
	var out []string
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if strings.HasPrefix(l, "(['") && strings.HasSuffix(l, "'],)") {
			items := strings.Split(strings.TrimSuffix(strings.TrimPrefix(l, "(["), "],)"), ", ")
			s.sort(items)
			out = append(out, "(["+strings.Join(items, ", ")+"],)")
			continue
		}
		if strings.HasPrefix(strings.TrimSpace(l), "string ") {
			j := i
			for j < len(lines) && strings.HasPrefix(strings.TrimSpace(lines[j]), "string ") {
				j++
			}
			run := append([]string(nil), lines[i:j]...)
			s.sort(run)
			out = append(out, run...)
			i = j - 1
			continue
		}
		out = append(out, l)
	}
	return out
}

func scenarioList(s *session) {
	a := s.peer("A")
	s.do(a, "request com.example.Listed 4")
	for _, c := range []struct {
		show func(*session, string, string) []string
		argv []string
	}{
		{showFirstColumn, s.busctl("list", "--no-legend")},
		{showFirstColumn, s.busctl("list", "--no-legend", "--acquired")},
		{showFirstColumn, s.busctl("list", "--no-legend", "--activatable")},
		{showStrings, s.dbusSend("--print-reply", "--dest="+driverDest, driverPath, "org.freedesktop.DBus.ListNames")},
		{showStrings, s.dbusSend("--print-reply", "--dest="+driverDest, driverPath, "org.freedesktop.DBus.ListActivatableNames")},
		{showStrings, s.gdbus("call", "--dest", driverDest, "--object-path", driverPath, "--method", "org.freedesktop.DBus.ListNames")},
		{showStrings, s.gdbus("call", "--dest", driverDest, "--object-path", driverPath, "--method", "org.freedesktop.DBus.ListActivatableNames")},
	} {
		s.settle()
		s.run(c.show, c.argv)
	}
}

func scenarioCall(s *session) {
	e := s.service("E")
	s.do(e, "serve")
	s.do(e, "request com.example.Echo 4")
	// dbus-test-tool echo answers every call with an empty return.
	s.startAs(nil, "T", "dbus-test-tool", "echo", "--name=com.example.Empty")
	s.labels[s.waitOwned("com.example.Empty")] = "T"

	s.run(nil, s.busctl("call", "com.example.Echo", "/x", "com.example.I", "Echo", "s", "hi"))
	s.run(nil, s.busctl("call", "--auto-start=no", "com.example.Echo", "/x", "com.example.I", "Echo", "s", "hi"))
	s.run(nil, s.busctl("call", e.name, "/x", "com.example.I", "Echo", "s", "by unique name"))
	s.run(nil, s.dbusSend("--print-reply", "--dest=com.example.Echo", "/x", "com.example.I.Echo", "string:hi"))
	s.run(nil, s.gdbus("call", "--dest", "com.example.Echo", "--object-path", "/x", "--method", "com.example.I.Echo", "hi"))
	s.run(nil, s.busctl("call", "com.example.Empty", "/x", "com.example.I", "Anything", "s", "hi"))
	s.run(nil, s.dbusSend("--print-reply", "--dest=com.example.Empty", "/x", "com.example.I.Anything", "int32:7"))
	s.run(nil, s.gdbus("call", "--dest", "com.example.Empty", "--object-path", "/x", "--method", "com.example.I.Anything"))
	// A call that wants no reply, then one that does: the service
	// answers the second, so it got the first.
	s.run(nil, s.dbusSend("--dest=com.example.Echo", "/x", "com.example.I.Echo", "string:no reply"))
	c := s.peer("C")
	s.do(c, "call com.example.Echo from-python")
}

func scenarioErrors(s *session) {
	e := s.peer("E")
	s.do(e, "serve")
	s.do(e, "request com.example.Echo 4")
	nobody := []string{"com.example.Nobody", "/x", "com.example.I", "Echo"}
	s.run(nil, s.busctl(append(append([]string{"call"}, nobody...), "s", "hi")...))
	s.run(nil, s.busctl(append(append([]string{"call", "--auto-start=no"}, nobody...), "s", "hi")...))
	s.run(nil, s.dbusSend("--print-reply", "--dest=com.example.Nobody", "/x", "com.example.I.Echo", "string:hi"))
	s.run(nil, s.gdbus("call", "--dest", "com.example.Nobody", "--object-path", "/x", "--method", "com.example.I.Echo", "hi"))
	s.run(nil, s.busctl("call", ":1.999999", "/x", "com.example.I", "Echo", "s", "hi"))
	// Unknown methods: of the driver, and of a service (its own error,
	// routed back).
	s.run(nil, s.busctl("call", driverDest, driverPath, "org.freedesktop.DBus", "NoSuchMethod"))
	s.run(nil, s.dbusSend("--print-reply", "--dest="+driverDest, driverPath, "org.freedesktop.DBus.NoSuchMethod"))
	s.run(nil, s.gdbus("call", "--dest", driverDest, "--object-path", driverPath, "--method", "org.freedesktop.DBus.NoSuchMethod"))
	s.run(nil, s.busctl("call", "com.example.Echo", "/x", "com.example.I", "NoSuchMethod"))
	s.run(nil, s.busctl("call", "com.example.Echo", "/x", "com.example.I", "Echo", "i", "7"))
	// GetNameOwner of an unowned name.
	s.run(nil, s.busctl("call", driverDest, driverPath, "org.freedesktop.DBus", "GetNameOwner", "s", "com.example.Nobody"))
	s.run(nil, s.dbusSend("--print-reply", "--dest="+driverDest, driverPath, "org.freedesktop.DBus.GetNameOwner", "string:com.example.Nobody"))
	s.run(nil, s.gdbus("call", "--dest", driverDest, "--object-path", driverPath, "--method", "org.freedesktop.DBus.GetNameOwner", "com.example.Nobody"))
	s.run(nil, s.busctl("call", driverDest, driverPath, "org.freedesktop.DBus", "NameHasOwner", "s", "com.example.Nobody"))
	s.run(nil, s.busctl("call", driverDest, driverPath, "org.freedesktop.DBus", "NameHasOwner", "s", "com.example.Echo"))
	// A name no one may own, and one that is not a name.
	s.run(nil, s.busctl("call", driverDest, driverPath, "org.freedesktop.DBus", "RequestName", "su", "org.freedesktop.DBus", "0"))
	s.run(nil, s.busctl("call", driverDest, driverPath, "org.freedesktop.DBus", "RequestName", "su", "not a name", "0"))
	s.run(nil, s.busctl("call", driverDest, driverPath, "org.freedesktop.DBus", "StartServiceByName", "su", "com.example.Nobody", "0"))
	c := s.peer("C")
	s.do(c, "call com.example.Nobody hi")
	s.do(c, "callbus GetNameOwner s com.example.Nobody")
	// A callee that goes without answering: the caller gets NoReply
	// from the bus, not its own timeout.
	hang := s.start("caller", append([]string{"timeout", clientTimeout}, s.busctl("call", "com.example.Echo", "/x", "com.example.I", "Hang")...)...)
	e.until("the call to Hang", func(l string) bool { return l == "hanging" })
	s.kill(e)
	out := strings.Join(hang.rest(), "\n")
	s.logClient("busctl call com.example.Echo /x com.example.I Hang (E is killed meanwhile)", nil, out, hang.stderrAll(), hang.cmd.ProcessState.ExitCode())
}

// Name flags of RequestName.
const (
	allowReplacement = 1
	replaceExisting  = 2
	doNotQueue       = 4
)

func scenarioQueue(s *session) {
	w := s.peer("W")
	s.do(w, "watch com.example.Q")
	a, b, c := s.peer("A"), s.peer("B"), s.peer("C")
	req := func(p *peer, flags int) { s.do(p, fmt.Sprintf("request com.example.Q %d", flags)) }

	s.log("# queueing: A owns, B will not queue, C queues; A releases, C gets it")
	req(a, 0)
	req(b, doNotQueue)
	req(c, 0)
	req(a, 0) // already the owner
	s.do(a, "release com.example.Q")
	s.do(a, "release com.example.Q") // no longer the owner
	s.do(c, "release com.example.Q")
	s.do(a, "release com.example.Nobody")

	s.log("# replacement: A allows it, B replaces A, who queues; B dies, A gets it back")
	req(a, allowReplacement)
	req(b, replaceExisting)
	s.kill(b)
	s.do(a, "release com.example.Q")

	s.log("# no replacement allowed: B asks to replace and is queued; A dies, B gets it")
	a2 := s.peer("A2")
	req(a2, 0)
	b2 := s.peer("B2")
	req(b2, replaceExisting)
	req(c, doNotQueue)
	s.kill(a2)
	s.do(b2, "release com.example.Q")

	s.log("# replaced without queueing: A allows replacement, will not queue; B replaces and releases: no one owns it")
	req(a, allowReplacement|doNotQueue)
	req(c, 0)
	req(b2, replaceExisting|doNotQueue)
	s.do(b2, "release com.example.Q")
	s.do(c, "release com.example.Q")
}

func scenarioDisconnect(s *session) {
	w := s.peer("W")
	s.do(w, "watch com.example.Gone")
	rules := []string{"type='signal',member='NameOwnerChanged',arg0='com.example.Gone'", "type='signal',interface='com.example.Probe'"}
	m := s.monitor("dbus-monitor", append([]string{"dbus-monitor", "--address", s.addr}, rules...)...)
	bm := s.monitor("busctl-monitor", s.busctl("monitor", "--match="+rules[0], "--match="+rules[1])...)
	g := s.peer("G")
	s.do(g, "request com.example.Gone 4")
	s.kill(g)
	for _, mon := range []struct {
		p     *proc
		title string
	}{{m, "dbus-monitor " + strings.Join(quoteAll(rules), " ")}, {bm, "busctl monitor --match=" + strings.Join(quoteAll(rules), " --match=")}} {
		s.log("$ %s", mon.title)
		for _, l := range s.monitored(mon.p, "com.example.Gone") {
			s.log("  %s", l)
		}
	}
}

func quoteAll(l []string) []string {
	out := make([]string, len(l))
	for i, x := range l {
		out[i] = strconv.Quote(x)
	}
	return out
}

func scenarioBroadcast(s *session) {
	m := s.monitor("dbus-monitor", "dbus-monitor", "--address", s.addr)
	bm := s.monitor("busctl-monitor", s.busctl("monitor")...)
	r := s.peer("R")
	s.do(r, "match type='signal',interface='com.example.I'")
	// Each signal is delivered once the monitors show it: the bus routes
	// a message to all its receivers at once. Then R's round trip shows
	// whether it got it.
	for _, c := range []struct {
		argv []string
		arg  string
	}{
		{s.dbusSend("--type=signal", "/com/example/Obj", "com.example.I.Sig", "string:hello", "int32:7"), "hello"},
		// --session (the address comes from DBUS_SESSION_BUS_ADDRESS):
		// with --address gdbus emit says no Hello, and dbus-daemon
		// and dbus-broker close the connection, sometimes before
		// gdbus has flushed it (then it fails).
		{[]string{"gdbus", "emit", "--session", "--object-path", "/com/example/Obj", "--signal", "com.example.I.Sig2", "'from gdbus'"}, "from gdbus"},
		{s.busctl("emit", "/com/example/Obj", "com.example.I", "Sig3", "s", "from busctl"), "from busctl"},
	} {
		s.run(nil, c.argv)
		s.shown(m, `"`+c.arg+`"`)
		s.shown(bm, `"`+c.arg+`"`)
		s.sync(nil)
	}
	for _, mon := range []struct {
		p     *proc
		title string
	}{{m, "dbus-monitor"}, {bm, "busctl monitor"}} {
		s.log("$ %s", mon.title)
		for _, l := range s.monitored(mon.p, "com.example.I") {
			s.log("  %s", l)
		}
	}
}

func scenarioWait(s *session) {
	w := s.peer("W")
	s.do(w, "watchowner com.example.Later")
	// gdbus wait adds its match rule, then asks GetNameOwner: once the
	// bus has seen that call, the name appearing must wake it.
	seen := s.watchCall("GetNameOwner", "com.example.Later", w.name)
	g := s.start("gdbus-wait", append([]string{"timeout", clientTimeout}, s.gdbus("wait", "com.example.Later")...)...)
	seen()
	l := s.peer("L")
	s.do(l, "request com.example.Later 4")
	g.rest()
	s.log("$ gdbus wait com.example.Later")
	s.log("  exit %d", g.cmd.ProcessState.ExitCode())
}

// watchCall becomes a monitor of method calls named member whose first
// argument is arg, from any sender but except, and returns a function
// that waits until one has passed the bus.
func (s *session) watchCall(member, arg, except string) func() {
	s.t.Helper()
	c, err := dbuspeer.Dial(s.path)
	if err != nil {
		s.t.Fatalf("harness monitor: %v", err)
	}
	s.labels[c.Name] = "harness-monitor"
	rule := fmt.Sprintf("type='method_call',member='%s',arg0='%s'", member, arg)
	r, err := c.Call(&dbuspeer.Message{
		Type: dbuspeer.TypeMethodCall, Destination: driverDest, Path: driverPath,
		Interface: "org.freedesktop.DBus.Monitoring", Member: "BecomeMonitor", Signature: "asu",
		Body: asuBody([]string{rule}, 0),
	})
	if err != nil {
		c.Close()
		s.t.Fatalf("BecomeMonitor: %v", err)
	}
	r.Close()
	return func() {
		s.t.Helper()
		defer c.Close()
		timer := time.AfterFunc(waitTimeout, func() { c.Shutdown() })
		defer timer.Stop()
		for {
			m, err := c.Read()
			if err != nil {
				s.t.Fatalf("waiting for a %s call about %s: %v%s", member, arg, err, s.stderrs())
			}
			m.Close()
			if a, _ := m.BodyString(); m.Type == dbuspeer.TypeMethodCall && m.Member == member && a == arg && m.Sender != except {
				return
			}
		}
	}
}

func scenarioFD(s *session) {
	e := s.service("E")
	s.do(e, "serve")
	s.do(e, "request com.example.Fd 4")
	c := s.peer("C")
	s.do(c, "callfd com.example.Fd written-to-a-pipe")
	s.do(c, "callfd "+e.name+" by-unique-name")
}

var reU = regexp.MustCompile(`^u ([0-9]+)$`)

func scenarioDriver(s *session) {
	d := s.peer("D")
	s.do(d, "creds")
	s.do(d, "getid")
	pid := d.cmd.Process.Pid
	s.run(nil, s.busctl("call", driverDest, driverPath, "org.freedesktop.DBus", "GetConnectionUnixUser", "s", d.name))
	s.run(func(_ *session, stdout, _ string) []string {
		var out []string
		for _, l := range splitLines(stdout) {
			if m := reU.FindStringSubmatch(l); m != nil {
				if m[1] == strconv.Itoa(pid) {
					l = "u (the pid of D)"
				} else {
					l = "u " + m[1] + " (not the pid of D)"
				}
			}
			out = append(out, l)
		}
		return out
	}, s.busctl("call", driverDest, driverPath, "org.freedesktop.DBus", "GetConnectionUnixProcessID", "s", d.name))
	s.run(nil, s.busctl("call", driverDest, driverPath, "org.freedesktop.DBus", "GetConnectionUnixUser", "s", "com.example.Nobody"))
	s.run(showHex, s.busctl("call", driverDest, driverPath, "org.freedesktop.DBus", "GetId"))
	s.run(showHex, s.gdbus("call", "--dest", driverDest, "--object-path", driverPath, "--method", "org.freedesktop.DBus.GetId"))
	s.run(nil, s.busctl("call", driverDest, driverPath, "org.freedesktop.DBus.Peer", "Ping"))
	s.run(nil, s.dbusSend("--print-reply", "--dest="+driverDest, driverPath, "org.freedesktop.DBus.Peer.Ping"))
	s.run(nil, s.gdbus("call", "--dest", driverDest, "--object-path", driverPath, "--method", "org.freedesktop.DBus.Peer.Ping"))
	for _, path := range []string{"/", driverPath} {
		s.run(showIntrospection, s.dbusSend("--print-reply", "--dest="+driverDest, path, "org.freedesktop.DBus.Introspectable.Introspect"))
		s.run(showIntrospection, s.gdbus("introspect", "--dest", driverDest, "--object-path", path, "--xml"))
	}
}

var reHex32 = regexp.MustCompile(`[0-9a-f]{32}`)

// showHex shows a bus id as "(32 hex digits)": its value differs per bus.
func showHex(_ *session, stdout, _ string) []string {
	return splitLines(reHex32.ReplaceAllString(stdout, "(32 hex digits)"))
}

// showIntrospection says whether the reply holds introspection XML: its
// content is the bus's own and is not compared.
func showIntrospection(_ *session, stdout, _ string) []string {
	if strings.Contains(stdout, "<node") {
		return []string{"(introspection XML)"}
	}
	return splitLines(stdout)
}
