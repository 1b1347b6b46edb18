package dbusscenario

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/porter-ipc/porter/internal/dbuspeer"
)

// clientTimeout bounds every one-shot client (`timeout 10`): libdbus and
// sd-bus otherwise wait 25 s for an answer that never comes.
const clientTimeout = "10"

// waitTimeout bounds every wait for a condition (a line printed, a name
// owned or gone): far above what any step takes on a busy machine, so it
// only fires when the bus under test never does what is awaited.
const waitTimeout = 30 * time.Second

// session is one scenario's run: the bus, the transcript being written,
// the labels of the unique names it knows and the processes it started.
type session struct {
	t      testing.TB
	path   string
	addr   string
	dir    string // holds peer.py; enterable by nobody
	cred   *syscall.Credential
	lines  []string
	labels map[string]string // unique name → label
	procs  []*proc
	conn   *dbuspeer.Conn // the harness's own connection, for waits
	probes int
	// timeoutShows says a client that timeout(1) ends (exit 124) is a
	// behaviour to diff, not a failure (a monitor the bus should refuse).
	timeoutShows bool
}

func newSession(t testing.TB, path, dir string, cred *syscall.Credential, residents []string) *session {
	s := &session{t: t, path: path, addr: "unix:path=" + path, dir: dir, cred: cred, labels: map[string]string{}}
	for _, r := range residents {
		s.labels[r] = "resident"
	}
	t.Cleanup(s.close)
	return s
}

// residents returns the unique names of the connections on the bus
// before the scenarios start, such as dbus-broker-launch's own.
func residents(path string) ([]string, error) {
	c, err := dbuspeer.Dial(path)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	r, err := c.Call(&dbuspeer.Message{
		Type: dbuspeer.TypeMethodCall, Destination: "org.freedesktop.DBus", Path: "/org/freedesktop/DBus",
		Interface: "org.freedesktop.DBus", Member: "ListNames",
	})
	if err != nil {
		return nil, err
	}
	names, err := stringArray(r.Body)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, ":") && n != c.Name {
			out = append(out, n)
		}
	}
	return out, nil
}

// log appends a line to the transcript.
func (s *session) log(format string, args ...any) {
	s.lines = append(s.lines, fmt.Sprintf(format, args...))
}

// transcript is the session's normalised transcript.
func (s *session) transcript() string {
	return Normalize(strings.Join(s.lines, "\n")+"\n", s.labels)
}

// bus returns the harness's own connection, opened on first use and
// labelled "harness".
func (s *session) bus() *dbuspeer.Conn {
	if s.conn == nil {
		c, err := dbuspeer.Dial(s.path)
		if err != nil {
			s.t.Fatalf("harness connection to %s: %v", s.addr, err)
		}
		s.conn = c
		s.labels[c.Name] = "harness"
	}
	return s.conn
}

// driver calls a method of org.freedesktop.DBus on the harness's
// connection.
func (s *session) driver(member, sig string, body []byte) (*dbuspeer.Message, error) {
	return s.bus().Call(&dbuspeer.Message{
		Type: dbuspeer.TypeMethodCall, Destination: "org.freedesktop.DBus", Path: "/org/freedesktop/DBus",
		Interface: "org.freedesktop.DBus", Member: member, Signature: sig, Body: body,
	})
}

// owner returns the unique name owning name, or "" if none does.
func (s *session) owner(name string) string {
	r, err := s.driver("GetNameOwner", "s", dbuspeer.StringBody(name))
	if err != nil {
		if strings.Contains(err.Error(), "NameHasNoOwner") {
			return ""
		}
		s.t.Fatalf("GetNameOwner %s: %v", name, err)
	}
	o, err := r.BodyString()
	if err != nil {
		s.t.Fatalf("GetNameOwner %s: %v", name, err)
	}
	return o
}

// waitOwned waits until name has an owner and returns it.
func (s *session) waitOwned(name string) string {
	var o string
	s.waitFor(name+" owned", func() bool { o = s.owner(name); return o != "" })
	return o
}

// waitGone waits until the bus no longer knows name: for a unique name,
// until it has processed that connection's end, and so queued every
// signal the end causes before it answers anything sent later.
func (s *session) waitGone(name string) {
	s.waitFor(name+" gone", func() bool { return s.owner(name) == "" })
}

// settle waits until the only unique names on the bus are those of
// processes this session still runs, so that a listing shows no client
// that has exited but whose end the bus has not processed yet.
func (s *session) settle() {
	var names []string
	defer func() {
		if s.t.Failed() {
			s.t.Logf("the bus lists %q; the session knows %v", names, s.labels)
		}
	}()
	s.waitFor("the bus to drop the clients that exited", func() bool {
		r, err := s.driver("ListNames", "", nil)
		if err != nil {
			s.t.Fatalf("ListNames: %v", err)
		}
		names, err = stringArray(r.Body)
		if err != nil {
			s.t.Fatalf("ListNames: %v", err)
		}
		for _, n := range names {
			if strings.HasPrefix(n, ":") && s.labels[n] == "" {
				return false
			}
			if l := s.labels[n]; l != "" && l != "harness" && l != "resident" && !s.alive(l) {
				return false
			}
		}
		return true
	})
}

func (s *session) alive(label string) bool {
	for _, p := range s.procs {
		if p.label == label {
			select {
			case <-p.done:
				return false
			default:
				return true
			}
		}
	}
	return true
}

func (s *session) waitFor(what string, cond func() bool) {
	s.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			s.t.Fatalf("timed out waiting for %s%s", what, s.stderrs())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stderrs is what the running processes wrote to stderr, for a failure.
func (s *session) stderrs() string {
	var b strings.Builder
	for _, p := range s.procs {
		if e := p.stderrText(); e != "" {
			fmt.Fprintf(&b, "\n%s stderr:\n%s", p.label, e)
		}
	}
	return b.String()
}

// command makes a command that runs as the session's user, with the bus
// as the session bus.
func (s *session) command(argv ...string) *exec.Cmd {
	return s.commandAs(s.cred, argv...)
}

// commandAs makes a command that runs with cred (nil: as this process).
func (s *session) commandAs(cred *syscall.Credential, argv ...string) *exec.Cmd {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "DBUS_SESSION_BUS_ADDRESS="+s.addr)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if slices.Contains(argv, "busctl") {
		// Only the debug log names the error a call got.
		cmd.Env = append(cmd.Env, "SYSTEMD_LOG_LEVEL=debug")
	}
	if cred != nil {
		cmd.SysProcAttr.Credential = cred
		cmd.Env = append(cmd.Env, "HOME=/tmp", "XDG_RUNTIME_DIR=")
	}
	return cmd
}

// client runs a one-shot client under `timeout 10` and logs the command
// line shown (title), its output filtered by show, and its exit status.
func (s *session) client(title string, show func(s *session, stdout, stderr string) []string, argv ...string) {
	s.t.Helper()
	cmd := s.command(append([]string{"timeout", clientTimeout}, argv...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			s.t.Fatalf("%s: %v", title, err)
		}
		code = ee.ExitCode()
	}
	s.logClient(title, show, stdout.String(), stderr.String(), code)
}

// logClient logs a client's command line, output and exit status.
func (s *session) logClient(title string, show func(*session, string, string) []string, stdout, stderr string, code int) {
	s.t.Helper()
	if code == 124 && !s.timeoutShows {
		s.t.Errorf("%s timed out (exit 124); stderr:\n%s", title, lastLines(stderr, 20))
	}
	s.log("$ %s", title)
	if show == nil {
		show = showAll
	}
	for _, l := range show(s, stdout, stderr) {
		s.log("  %s", l)
	}
	if code != 0 {
		if e := errorName(stderr); e != "" {
			s.log("  error %s", e)
		}
		s.log("  exit %d", code)
	}
}

// showAll shows every line of stdout.
func showAll(_ *session, stdout, _ string) []string { return splitLines(stdout) }

// showFirstColumn shows the first column of each line, sorted (busctl
// list: the names, without pids and processes).
func showFirstColumn(s *session, stdout, _ string) []string {
	var out []string
	for _, l := range splitLines(stdout) {
		if f := strings.Fields(l); len(f) > 0 {
			out = append(out, f[0])
		}
	}
	s.sort(out)
	return out
}

// sort sorts the lines of a listing whose order the bus does not define,
// by their text with the known unique names as labels: the one unknown
// (the listing client's own) sorts the same on every bus.
func (s *session) sort(l []string) {
	key := func(x string) string {
		return reUnique.ReplaceAllStringFunc(x, func(u string) string {
			if label, ok := s.labels[u]; ok {
				return ":" + label
			}
			return ":?"
		})
	}
	sort.SliceStable(l, func(i, j int) bool { return key(l[i]) < key(l[j]) })
}

func splitLines(s string) []string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func lastLines(s string, n int) string {
	l := splitLines(s)
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// errorName finds the D-Bus error name in a client's stderr: dbus-send
// ("Error NAME: text"), gdbus ("GDBus.Error:NAME: text") and busctl under
// SYSTEMD_LOG_LEVEL=debug ("Got message type=error ... error-name=NAME").
// The texts differ between buses and are not compared.
func errorName(stderr string) string {
	for _, l := range splitLines(stderr) {
		switch {
		case strings.HasPrefix(l, "Got message type=error"):
			if i := strings.Index(l, " error-name="); i >= 0 {
				return strings.Fields(l[i+len(" error-name="):])[0]
			}
		case strings.HasPrefix(l, "Error org."), strings.HasPrefix(l, "Error com."):
			return strings.TrimSuffix(strings.Fields(l)[1], ":")
		case strings.Contains(l, "GDBus.Error:"):
			e := l[strings.Index(l, "GDBus.Error:")+len("GDBus.Error:"):]
			if i := strings.Index(e, ":"); i >= 0 {
				e = e[:i]
			}
			return e
		}
	}
	return ""
}

// proc is a long-running process of a scenario: a python3-dbus peer, a
// monitor, a service. Its stdout is read line by line as it comes.
type proc struct {
	s     *session
	label string
	cmd   *exec.Cmd
	stdin interface {
		Write([]byte) (int, error)
		Close() error
	}
	done chan struct{} // closed when its stdout ends and it has been waited for

	mu     sync.Mutex
	out    []string
	next   int // first line not yet taken
	stderr bytes.Buffer
}

// start starts a long-running process, labelled label in the transcript.
func (s *session) start(label string, argv ...string) *proc {
	return s.startAs(s.cred, label, argv...)
}

// startAs starts a long-running process with cred (nil: as this process).
func (s *session) startAs(cred *syscall.Credential, label string, argv ...string) *proc {
	s.t.Helper()
	p := &proc{s: s, label: label, cmd: s.commandAs(cred, argv...), done: make(chan struct{})}
	p.cmd.Stderr = &lockedWriter{mu: &p.mu, b: &p.stderr}
	in, err := p.cmd.StdinPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	p.stdin = in
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		s.t.Fatalf("start %s: %v", argv[0], err)
	}
	s.procs = append(s.procs, p)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.out = append(p.out, sc.Text())
			p.mu.Unlock()
		}
		p.cmd.Wait()
		close(p.done)
	}()
	return p
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w *lockedWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(b)
}

// stderrText is the end of what the process wrote to stderr.
func (p *proc) stderrText() string { return lastLines(p.stderrAll(), 30) }

// stderrAll is all the process wrote to stderr.
func (p *proc) stderrAll() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// until waits for a line that satisfies match and returns the lines up to
// it (not included), taking them all.
func (p *proc) until(what string, match func(string) bool) []string {
	p.s.t.Helper()
	var got []string
	found := false
	exited := false
	p.s.waitFor(p.label+" to print "+what, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		for i := p.next; i < len(p.out); i++ {
			if match(p.out[i]) {
				got = append([]string(nil), p.out[p.next:i]...)
				p.next = i + 1
				found = true
				return true
			}
		}
		select {
		case <-p.done:
			exited = true
			return true
		default:
			return false
		}
	})
	if !found && exited {
		p.mu.Lock()
		rest := strings.Join(p.out[p.next:], "\n")
		p.mu.Unlock()
		p.s.t.Fatalf("%s exited before printing %s; its output:\n%s%s", p.label, what, rest, p.s.stderrs())
	}
	return got
}

// rest waits for the process to end and returns the lines not taken.
func (p *proc) rest() []string {
	p.s.t.Helper()
	p.s.waitFor(p.label+" to exit", func() bool {
		select {
		case <-p.done:
			return true
		default:
			return false
		}
	})
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.out[p.next:]
	p.next = len(p.out)
	return l
}

// signal sends sig to the process (for a client under timeout(1), to
// timeout, which passes SIGTERM on).
func (p *proc) signal(sig syscall.Signal) {
	p.cmd.Process.Signal(sig)
}

// close ends every process the session started and its connection:
// SIGTERM first, which timeout(1) passes on to the client it runs (a
// SIGKILL would leave that client behind), then SIGKILL.
func (s *session) close() {
	for _, p := range s.procs {
		p.stdin.Close()
		p.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range s.procs {
		select {
		case <-p.done:
			continue
		case <-time.After(10 * time.Second):
		}
		p.cmd.Process.Signal(syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(waitTimeout):
			s.t.Errorf("%s did not exit after SIGKILL", p.label)
		}
	}
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
}

// peer is a python3-dbus peer (testdata/peer.py) on the bus.
type peer struct {
	*proc
	name string // its unique name
}

// peer starts a python3-dbus peer labelled label; its unique name shows
// as ":label" in the transcript.
func (s *session) peer(label string) *peer {
	s.t.Helper()
	return s.peerAs(s.cred, label)
}

// service starts a python3-dbus peer that runs as this process's user
// (root) even when the session's clients run as nobody: their calls, and
// the fds they pass, then cross users.
func (s *session) service(label string) *peer {
	s.t.Helper()
	return s.peerAs(nil, label)
}

func (s *session) peerAs(cred *syscall.Credential, label string) *peer {
	s.t.Helper()
	p := &peer{proc: s.startAs(cred, label, "/usr/bin/python3", filepath.Join(s.dir, "peer.py"), s.addr)}
	var hello string
	p.until("hello", func(l string) bool { hello = l; return strings.HasPrefix(l, "hello ") })
	p.name = strings.TrimPrefix(hello, "hello ")
	s.labels[p.name] = label
	return p
}

// do has the peer run cmd, then brings every live peer in step (each
// does a round trip to the bus) and logs what each printed meanwhile.
func (s *session) do(p *peer, cmd string) {
	s.t.Helper()
	s.log("%s> %s", p.label, cmd)
	if _, err := p.stdin.Write([]byte(cmd + "\n")); err != nil {
		s.t.Fatalf("%s: write %q: %v", p.label, cmd, err)
	}
	s.sync(p.proc)
}

// sync has every live peer do a round trip to the bus and logs the lines
// each printed before its answer: every message the bus sent it before
// has been dispatched by then. The peer first (if not nil) goes first:
// once it has answered, the bus has processed the command it was given,
// and so queued whatever that command sends the others.
func (s *session) sync(first *proc) {
	s.t.Helper()
	order := []*proc{}
	if first != nil {
		order = append(order, first)
	}
	for _, q := range s.procs {
		if q != first {
			order = append(order, q)
		}
	}
	for _, q := range order {
		if !strings.HasSuffix(q.cmd.Path, "python3") || !s.alive(q.label) {
			continue
		}
		if _, err := q.stdin.Write([]byte("sync\n")); err != nil {
			s.t.Fatalf("%s: write sync: %v", q.label, err)
		}
		for _, l := range q.until("synced", func(l string) bool { return l == "synced" }) {
			s.log("%s: %s", q.label, l)
		}
	}
}

// kill kills the peer (SIGKILL: no goodbye), waits until the bus has
// processed its end and brings the other peers in step.
func (s *session) kill(p *peer) {
	s.t.Helper()
	s.log("kill %s", p.label)
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.rest()
	s.waitGone(p.name)
	s.sync(nil)
}

// probe sends a signal that monitors print (interface com.example.Probe,
// one string argument) and returns that argument.
func (s *session) probe() string {
	s.probes++
	text := "probe-" + strconv.Itoa(s.probes)
	if _, err := s.bus().Send(&dbuspeer.Message{
		Type: dbuspeer.TypeSignal, Flags: dbuspeer.FlagNoReplyExpected, Path: "/com/example/Probe",
		Interface: "com.example.Probe", Member: "Ping", Signature: "s", Body: dbuspeer.StringBody(text),
	}); err != nil {
		s.t.Fatalf("probe: %v", err)
	}
	return text
}

// monitor starts a monitor client (dbus-monitor, busctl monitor) and
// waits until it prints the harness's probe signals: probes go out until
// one shows, so the monitor is in place when monitor returns.
func (s *session) monitor(label string, argv ...string) *proc {
	s.t.Helper()
	m := s.start(label, append([]string{"timeout", clientTimeout}, argv...)...)
	s.waitFor(label+" to show a probe signal", func() bool {
		text := s.probe()
		deadline := time.Now().Add(200 * time.Millisecond)
		for time.Now().Before(deadline) {
			m.mu.Lock()
			seen := false
			for _, l := range m.out[m.next:] {
				seen = seen || strings.Contains(l, `"`+text+`"`)
			}
			m.mu.Unlock()
			if seen {
				return true
			}
			select {
			case <-m.done:
				return true // until below reports it
			default:
			}
			time.Sleep(5 * time.Millisecond)
		}
		return false
	})
	m.mu.Lock()
	m.next = len(m.out)
	m.mu.Unlock()
	return m
}

// shown waits until the monitor m has printed a line containing text,
// without taking any of its lines.
func (s *session) shown(m *proc, text string) {
	s.t.Helper()
	s.waitFor(m.label+" to show "+text, func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		for _, l := range m.out[m.next:] {
			if strings.Contains(l, text) {
				return true
			}
		}
		return false
	})
}

// monitored sends a last probe, waits until the monitor shows it, stops
// the monitor and returns the messages it showed since it was ready,
// parsed into blocks, keeping those that contain any of keep.
func (s *session) monitored(m *proc, keep ...string) []string {
	s.t.Helper()
	end := s.probe()
	lines := m.until("the last probe", func(l string) bool { return strings.Contains(l, `"`+end+`"`) })
	m.signal(syscall.SIGTERM)
	m.rest()
	var out []string
	for _, b := range blocks(lines) {
		text := strings.Join(b, "\n")
		if strings.HasPrefix(b[0], "‣") && strings.Contains(text, "Sender=org.freedesktop.DBus ") {
			// busctl names the sender on the line after the cookie.
			b[0] = reBusSerial.ReplaceAllString(b[0], "${1}=BUS")
		}
		for _, k := range keep {
			if strings.Contains(text, k) && !strings.Contains(text, "com.example.Probe") {
				out = append(out, b...)
				break
			}
		}
	}
	return out
}

// blocks splits a monitor's output into messages: dbus-monitor starts
// each at an unindented line, busctl monitor at a line starting with
// "‣". The last, partial block (the end probe's header) is dropped.
func blocks(lines []string) [][]string {
	var out [][]string
	for _, l := range lines {
		start := strings.HasPrefix(l, "‣") || (l != "" && l[0] != ' ' && !strings.HasPrefix(l, "Monitoring"))
		if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "Monitoring") {
			continue
		}
		if start || len(out) == 0 {
			out = append(out, nil)
		}
		out[len(out)-1] = append(out[len(out)-1], l)
	}
	if len(out) > 0 {
		out = out[:len(out)-1]
	}
	return out
}

// stringArray decodes a little-endian body of signature "as".
func stringArray(b []byte) ([]string, error) {
	if len(b) < 4 {
		return nil, fmt.Errorf("body of %d bytes is no array", len(b))
	}
	n := int(binary.LittleEndian.Uint32(b))
	b = b[4:]
	if n > len(b) {
		return nil, fmt.Errorf("array of %d bytes in %d", n, len(b))
	}
	b = b[:n]
	var out []string
	off := 4
	for len(b) > 0 {
		if pad := (4 - off%4) % 4; pad > 0 {
			if pad > len(b) {
				return nil, fmt.Errorf("truncated array")
			}
			b, off = b[pad:], off+pad
		}
		if len(b) < 4 {
			return nil, fmt.Errorf("truncated array")
		}
		l := int(binary.LittleEndian.Uint32(b))
		if 4+l+1 > len(b) {
			return nil, fmt.Errorf("truncated string")
		}
		out = append(out, string(b[4:4+l]))
		b, off = b[4+l+1:], off+4+l+1
	}
	return out, nil
}

// asuBody marshals a body of signature "asu".
func asuBody(strs []string, u uint32) []byte {
	b := make([]byte, 4)
	for _, s := range strs {
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		b = append(b, dbuspeer.StringBody(s)...)
	}
	binary.LittleEndian.PutUint32(b, uint32(len(b)-4))
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return binary.LittleEndian.AppendUint32(b, u)
}
