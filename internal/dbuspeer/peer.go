// Package dbuspeer runs the D-Bus buses that porter's bus is measured
// against, dbus-broker and dbus-daemon, each as a private bus on a socket
// in a temporary directory, and holds a lean hand-written D-Bus client
// (Conn) and echo service (Echo) for the benchmarks. It also reads the CPU
// time and resident memory of a process from /proc, for the bus processes
// and porter's master alike.
package dbuspeer

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Limits of the private buses. dbus-broker 33 keeps max_outgoing_bytes ×
// max_connections_per_user in a 32-bit field: with dbus-daemon's session
// values (1e9 × 100000) it wraps, and the broker then disconnects
// subscribers as over quota. 131072 × 12288 = 1.6e9 stays below 2^31 and
// leaves room for the 10,000 idle connections of the memory benchmark.
const (
	maxConnections = 12288
	maxBytes       = 131072
)

const config = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
  </policy>
  <limit name="max_incoming_bytes">%d</limit>
  <limit name="max_outgoing_bytes">%d</limit>
  <limit name="max_connections_per_user">%d</limit>
  <limit name="max_completed_connections">%d</limit>
  <limit name="max_incomplete_connections">1024</limit>
</busconfig>
`

// Peer is a private bus process.
type Peer struct {
	// Kind is "dbus-broker" or "dbus-daemon".
	Kind string
	// Path is the bus's socket; its D-Bus address is unix:path=Path.
	Path string
	// PID is the bus process itself (for dbus-broker, not its launcher):
	// the one whose CPU time and memory the benchmarks read.
	PID int

	dir     string
	cmd     *exec.Cmd
	logPath string
	journal func()
}

// StartBroker starts dbus-broker as the benchmarks do, without
// systemd: systemd-socket-activate binds the socket and, on the first
// connection, execs dbus-broker-launch, which forks dbus-broker. The
// launcher logs to the journal socket, so it gets one of its own (a
// datagram socket drained and discarded) in a private mount namespace:
// StartBroker needs root. It makes that first connection, so PID is
// known when it returns.
func StartBroker() (*Peer, error) {
	for _, prog := range []string{"systemd-socket-activate", "dbus-broker-launch", "dbus-broker"} {
		if _, err := exec.LookPath(prog); err != nil {
			return nil, fmt.Errorf("dbuspeer: %s is not installed (scripts/install-deps installs it): %w", prog, err)
		}
	}
	p, err := newPeer("dbus-broker")
	if err != nil {
		return nil, err
	}
	jdir := filepath.Join(p.dir, "journal")
	if err := os.Mkdir(jdir, 0o755); err != nil {
		return nil, p.fail(err)
	}
	if p.journal, err = drainJournal(filepath.Join(jdir, "socket")); err != nil {
		return nil, p.fail(err)
	}
	// The launcher's journal is this peer's own socket, bind-mounted at
	// journalPath in a mount namespace of its own: buses of several test
	// processes at once never share (or remove) one another's.
	if err := os.MkdirAll(filepath.Dir(journalPath), 0o755); err != nil {
		return nil, p.fail(fmt.Errorf("dbuspeer: journal mount point: %w", err))
	}
	p.cmd = exec.Command("sh", "-c", `mount --bind "$0" `+filepath.Dir(journalPath)+` && exec "$@"`, jdir,
		"systemd-socket-activate", "-l", p.Path,
		"-E", "DBUS_SESSION_BUS_ADDRESS=unix:path="+p.Path,
		"dbus-broker-launch", "--scope", "user", "--config-file", filepath.Join(p.dir, "bus.conf"))
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	if err := p.start(); err != nil {
		return nil, err
	}
	// The first connection makes systemd-socket-activate exec the
	// launcher. The socket file appears at bind, before listen: until
	// then connecting is refused.
	var c *Conn
	var derr error
	if err := p.poll("the socket of systemd-socket-activate", func() bool {
		c, derr = Dial(p.Path)
		return derr == nil || !(errors.Is(derr, unix.ENOENT) || errors.Is(derr, unix.ECONNREFUSED))
	}); err != nil {
		return nil, p.fail(err)
	}
	if derr != nil {
		return nil, p.fail(derr)
	}
	c.Close()
	launcher := p.cmd.Process.Pid
	if err := p.poll("dbus-broker, the child of dbus-broker-launch", func() bool {
		p.PID = childOf(launcher)
		return p.PID > 0
	}); err != nil {
		return nil, p.fail(err)
	}
	return p, nil
}

// StartDaemon starts dbus-daemon on a private socket and waits until it
// has printed its address (it listens by then).
func StartDaemon() (*Peer, error) {
	if _, err := exec.LookPath("dbus-daemon"); err != nil {
		return nil, fmt.Errorf("dbuspeer: dbus-daemon is not installed (scripts/install-deps installs it): %w", err)
	}
	p, err := newPeer("dbus-daemon")
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command("dbus-daemon", "--nofork", "--print-address", "--config-file="+filepath.Join(p.dir, "bus.conf"))
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, p.fail(err)
	}
	if err := p.start(); err != nil {
		return nil, err
	}
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		return nil, p.fail(fmt.Errorf("reading its address: %w", err))
	}
	p.PID = p.cmd.Process.Pid
	return p, nil
}

// newPeer makes the temporary directory with the bus's config file.
func newPeer(kind string) (*Peer, error) {
	dir, err := os.MkdirTemp("", "porter-"+kind+"-")
	if err != nil {
		return nil, fmt.Errorf("dbuspeer: %w", err)
	}
	p := &Peer{Kind: kind, Path: filepath.Join(dir, "bus"), dir: dir, logPath: filepath.Join(dir, "log")}
	conf := fmt.Sprintf(config, p.Path, maxBytes, maxBytes, maxConnections, maxConnections)
	if err := os.WriteFile(filepath.Join(dir, "bus.conf"), []byte(conf), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("dbuspeer: %w", err)
	}
	return p, nil
}

// start runs p.cmd with its stderr in the log file, after raising this
// process's fd limit, which the bus inherits (it holds an fd per client).
func (p *Peer) start() error {
	if err := RaiseNoFile(); err != nil {
		return p.fail(err)
	}
	log, err := os.Create(p.logPath)
	if err != nil {
		return p.fail(err)
	}
	defer log.Close()
	p.cmd.Stderr = log
	if p.cmd.SysProcAttr == nil {
		p.cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	p.cmd.SysProcAttr.Pdeathsig = syscall.SIGTERM
	if err := p.cmd.Start(); err != nil {
		p.cmd = nil
		return p.fail(err)
	}
	return nil
}

// poll waits up to 10 seconds for cond, failing early if the process
// started has exited.
func (p *Peer) poll(what string, cond func() bool) error {
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out waiting for %s", what)
		}
		if st, err := procState(p.cmd.Process.Pid); err != nil || st == "Z" {
			return fmt.Errorf("%s exited while waiting for %s", p.cmd.Path, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return nil
}

// fail stops what was started and returns err with the bus's log.
func (p *Peer) fail(err error) error {
	log, _ := os.ReadFile(p.logPath)
	p.Stop()
	if len(log) > 0 {
		return fmt.Errorf("dbuspeer: starting %s: %w; its log:\n%s", p.Kind, err, log)
	}
	return fmt.Errorf("dbuspeer: starting %s: %w", p.Kind, err)
}

// Stop ends the bus (and, for dbus-broker, its launcher), waits for the
// processes to go and removes the temporary directory and the journal
// socket if this package made it and no other bus uses it.
func (p *Peer) Stop() error {
	var err error
	term := true
	if p.PID > 0 && p.Kind == "dbus-broker" {
		// dbus-broker is the launcher's child, not ours: stopped first,
		// it is reaped by the launcher, which then exits by itself.
		syscall.Kill(p.PID, syscall.SIGTERM)
		term = false
	}
	if p.cmd != nil && p.cmd.Process != nil {
		if term {
			p.cmd.Process.Signal(syscall.SIGTERM)
		}
		done := make(chan error, 1)
		go func() { done <- p.cmd.Wait() }()
		var werr error
		select {
		case werr = <-done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			werr = <-done
			err = fmt.Errorf("dbuspeer: %s did not exit in 10 s; killed", p.cmd.Path)
		}
		var ee *exec.ExitError
		if werr != nil && !errors.As(werr, &ee) {
			err = errors.Join(err, werr)
		}
		p.cmd = nil
	}
	if p.dir != "" {
		os.RemoveAll(p.dir)
		p.dir = ""
	}
	if p.journal != nil {
		p.journal()
		p.journal = nil
	}
	return err
}

// childOf returns a child process of pid, or 0 while it has none.
func childOf(pid int) int {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		if f := strings.Fields(string(b)); len(f) > 0 {
			n, _ := strconv.Atoi(f[0])
			return n
		}
	}
	return 0
}

// stat returns the fields of /proc/PID/stat after the command name: [0]
// is the state (field 3 of proc(5)).
func stat(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return nil, fmt.Errorf("dbuspeer: /proc/%d/stat unreadable: %q", pid, b)
	}
	return strings.Fields(string(b[i+1:])), nil
}

func procState(pid int) (string, error) {
	f, err := stat(pid)
	if err != nil {
		return "", err
	}
	return f[0], nil
}

// clockTick is USER_HZ, the unit of /proc/PID/stat's times: 100 on every
// Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// CPUTime returns the user plus system CPU time pid has used, from
// /proc/PID/stat (10 ms resolution: measure over a run, not a call).
func CPUTime(pid int) (time.Duration, error) {
	f, err := stat(pid)
	if err != nil {
		return 0, fmt.Errorf("dbuspeer: CPU time of %d: %w", pid, err)
	}
	if len(f) < 13 {
		return 0, fmt.Errorf("dbuspeer: /proc/%d/stat has %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("dbuspeer: /proc/%d/stat: %w", pid, err)
	}
	return time.Duration(utime+stime) * clockTick, nil
}

// RSS returns the resident memory of pid in bytes (VmRSS of
// /proc/PID/status).
func RSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("dbuspeer: memory of %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				if err == nil {
					return kb << 10, nil
				}
			}
			return 0, fmt.Errorf("dbuspeer: /proc/%d/status: VmRSS %q", pid, v)
		}
	}
	return 0, fmt.Errorf("dbuspeer: /proc/%d/status has no VmRSS", pid)
}

// RaiseNoFile raises this process's soft RLIMIT_NOFILE to the hard one,
// for itself and the children it starts from now on (Go restores the
// original soft limit in children unless the limit was set explicitly).
func RaiseNoFile() error {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return fmt.Errorf("dbuspeer: getrlimit: %w", err)
	}
	r.Cur = r.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return fmt.Errorf("dbuspeer: setrlimit NOFILE %d: %w", r.Max, err)
	}
	return nil
}

// journalPath is where dbus-broker-launch sends its log, and must be able
// to connect to at start.
const journalPath = "/run/systemd/journal/socket"

// drainJournal listens on a datagram socket at path and discards what
// arrives until the returned stop is called.
func drainJournal(path string) (stop func(), err error) {
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("dbuspeer: journal stand-in: %w", err)
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Read(buf); err != nil && !errors.Is(err, io.ErrShortBuffer) {
				return
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { c.Close(); <-drained }) }, nil
}

// PinSelf binds every thread of this process to cpu, and so every thread
// and process it starts from then on (they inherit the mask), until the
// returned restore puts the mask it found back. Go starts threads at any
// time, so it goes over /proc/self/task until a pass finds none unbound.
func PinSelf(cpu int) (restore func() error, err error) {
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return nil, fmt.Errorf("dbuspeer: sched_getaffinity: %w", err)
	}
	var set unix.CPUSet
	set.Set(cpu)
	if err := setAllThreads(&set); err != nil {
		setAllThreads(&old)
		return nil, err
	}
	return func() error { return setAllThreads(&old) }, nil
}

// setAllThreads sets the affinity of every thread of this process.
func setAllThreads(set *unix.CPUSet) error {
	done := map[int]bool{}
	for {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("dbuspeer: %w", err)
		}
		fresh := 0
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil || done[tid] {
				continue
			}
			fresh++
			if err := unix.SchedSetaffinity(tid, set); err != nil && err != unix.ESRCH {
				return fmt.Errorf("dbuspeer: sched_setaffinity thread %d: %w", tid, err)
			}
			done[tid] = true
		}
		if fresh == 0 {
			return nil
		}
	}
}

// Place puts this process, and so every process it starts afterwards,
// under the bus benchmarks' placement until tb ends: all on CPU 0. On
// these 2-vCPU VMs a wake-up on the other vCPU costs more than a whole
// bus call (a C ping-pong: 11,600 round trips/s across the vCPUs, 224,000
// on one; dbus-broker here: about 9,000 calls/s unpinned, 20,000 pinned),
// so unpinned figures measure where the scheduler happened to put the
// processes more than the bus. On one CPU every process of a call (client,
// bus, service) shares it, and a bus's figure also shows its CPU cost.
// Every bus benchmark, porter's and the peers', calls Place first.
// PORTER_BENCH_CPU=N picks another CPU; PORTER_BENCH_CPU=none leaves the
// processes to the scheduler.
func Place(tb testing.TB) {
	tb.Helper()
	cpu := 0
	switch v := os.Getenv("PORTER_BENCH_CPU"); v {
	case "":
	case "none":
		return
	default:
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			tb.Fatalf("PORTER_BENCH_CPU=%q: want a CPU number or none", v)
		}
		cpu = n
	}
	restore, err := PinSelf(cpu)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := restore(); err != nil {
			tb.Error(err)
		}
	})
}
