package ipc

import (
	"errors"
	"os"
	"os/exec"
	"sync"

	"github.com/porter-ipc/porter/access"
	"github.com/porter-ipc/porter/fdpass"
	"github.com/porter-ipc/porter/internal/fdutil"
	"golang.org/x/sys/unix"
)

// Spawn is a Handler that runs a program for every connection, as
// s6-ipcserverd does: the connection is the program's stdin and stdout
// (blocking, as UCSPI programs expect), stderr is the server's, and its
// environment is the server's with the connection's UCSPI variables
// (Conn.Env). No other fd of the server reaches the program: porter's own
// fds are close-on-exec. The handler, and so the connection's place in
// the server's limits, lasts until the program exits.
//
// When the access rule that allowed the client has an exec file, its
// content runs instead of Argv, as s6-ipcserver-access runs it: with
// `execlineb -Pc CONTENT`, execlineb looked up in PATH, after the rule's
// env/ changes. Without execlineb the connection is closed and the
// failure reported to Started, never served by Argv instead.
type Spawn struct {
	Argv []string // the program and its arguments; Argv[0] is looked up in PATH for every connection
	Env  []string // the base environment; nil means os.Environ()
	// NoCred leaves the client's credentials out of the environment, as
	// s6-ipcserver -P does: IPCREMOTEEUID and IPCREMOTEEGID unset,
	// IPCCONNNUM empty.
	NoCred bool
	Stderr *os.File // nil means os.Stderr
	// Started and Exited, if set, report each program's start (or
	// failure to start: pid 0 and err) and its end.
	Started func(pid int, peer fdpass.Cred, err error)
	Exited  func(pid int, peer fdpass.Cred, state *os.ProcessState)

	// starting is held shared while a program is being started and
	// registered, and exclusively by Signal and Stop, so that a program
	// half started when they are called still gets the signals.
	starting sync.RWMutex
	stopped  bool // under starting: Stop was called
	mu       sync.Mutex
	procs    map[int]*os.Process
}

// ErrSpawnStopped is the error Started reports for a connection that
// came after Spawn.Stop: no program runs for it.
var ErrSpawnStopped = errors.New("ipc: Spawn stopped")

// ServeIPC runs the program for c and waits for it to exit.
func (s *Spawn) ServeIPC(c *Conn) {
	cmd, err := s.startAndRegister(c)
	if err != nil {
		if s.Started != nil {
			s.Started(0, c.Peer(), err)
		}
		return
	}
	pid := cmd.Process.Pid
	if s.Started != nil {
		s.Started(pid, c.Peer(), nil)
	}
	cmd.Wait()
	s.mu.Lock()
	delete(s.procs, pid)
	s.mu.Unlock()
	if s.Exited != nil {
		s.Exited(pid, c.Peer(), cmd.ProcessState)
	}
}

// startAndRegister starts the program for c, unless Stop was called, and
// puts it where Signal finds it, both before Signal or Stop can run.
func (s *Spawn) startAndRegister(c *Conn) (*exec.Cmd, error) {
	s.starting.RLock()
	defer s.starting.RUnlock()
	if s.stopped {
		return nil, ErrSpawnStopped
	}
	cmd, err := s.start(c)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.procs == nil {
		s.procs = map[int]*os.Process{}
	}
	s.procs[cmd.Process.Pid] = cmd.Process
	s.mu.Unlock()
	return cmd, nil
}

func (s *Spawn) start(c *Conn) (*exec.Cmd, error) {
	f, err := c.uc.File() // a close-on-exec dup of the connection
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := fdutil.Control(f, func(fd int) error {
		return os.NewSyscallError("fcntl O_NONBLOCK", unix.SetNonblock(fd, false))
	}); err != nil {
		return nil, err
	}
	argv := s.Argv
	if res, ok := c.Access(); ok && res.Exec != "" {
		argv = []string{"execlineb", "-Pc", res.Exec}
	}
	if len(argv) == 0 {
		return nil, &exec.Error{Name: "", Err: exec.ErrNotFound}
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return nil, err
	}
	env := s.Env
	if env == nil {
		env = os.Environ()
	}
	env = c.Environ(env)
	if s.NoCred {
		env = access.ApplyEnv(env, []access.EnvChange{{Name: "IPCREMOTEEUID", Unset: true}, {Name: "IPCREMOTEEGID", Unset: true}, {Name: "IPCCONNNUM"}})
	}
	stderr := s.Stderr
	if stderr == nil {
		stderr = os.Stderr
	}
	cmd := &exec.Cmd{Path: path, Args: argv, Env: env, Stdin: f, Stdout: f, Stderr: stderr}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c.Close() // the program holds the connection now
	return cmd, nil
}

// Signal sends sigs, in order, to every running program, including one
// being started when Signal is called.
func (s *Spawn) Signal(sigs ...os.Signal) {
	s.starting.Lock()
	defer s.starting.Unlock()
	s.signalLocked(sigs)
}

// Stop makes s start no more programs (connections that come later are
// closed at once, reported to Started as failures) and sends sigs, in
// order, to every running program, including one being started when Stop
// is called. s6-ipcserverd's SIGQUIT is Stop(SIGTERM, SIGCONT) and its
// SIGABRT Stop(SIGKILL), just before it exits.
func (s *Spawn) Stop(sigs ...os.Signal) {
	s.starting.Lock()
	defer s.starting.Unlock()
	s.stopped = true
	s.signalLocked(sigs)
}

func (s *Spawn) signalLocked(sigs []os.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sig := range sigs {
		for _, p := range s.procs {
			p.Signal(sig)
		}
	}
}

// Running returns the number of running programs.
func (s *Spawn) Running() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.procs)
}
