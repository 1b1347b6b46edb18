package ipc

import (
	"os"
	"os/exec"
	"sync"

	"github.com/porter-ipc/porter/access"
	"github.com/porter-ipc/porter/fdpass"
	"golang.org/x/sys/unix"
)

// Spawn is a Handler that runs a program for every connection, as
// s6-ipcserverd does: the connection is the program's stdin and stdout
// (blocking, as UCSPI programs expect), stderr is the server's, and its
// environment is the server's with the connection's UCSPI variables
// (Conn.Env). No other fd of the server reaches the program: porter's own
// fds are close-on-exec. The handler, and so the connection's place in
// the server's limits, lasts until the program exits.
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

	mu    sync.Mutex
	procs map[int]*os.Process
}

// ServeIPC runs the program for c and waits for it to exit.
func (s *Spawn) ServeIPC(c *Conn) {
	cmd, err := s.start(c)
	if err != nil {
		if s.Started != nil {
			s.Started(0, c.Peer(), err)
		}
		return
	}
	pid := cmd.Process.Pid
	s.mu.Lock()
	if s.procs == nil {
		s.procs = map[int]*os.Process{}
	}
	s.procs[pid] = cmd.Process
	s.mu.Unlock()
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

func (s *Spawn) start(c *Conn) (*exec.Cmd, error) {
	f, err := c.uc.File() // a close-on-exec dup of the connection
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetNonblock(int(fd), false) }); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, os.NewSyscallError("fcntl O_NONBLOCK", serr)
	}
	if len(s.Argv) == 0 {
		return nil, &exec.Error{Name: "", Err: exec.ErrNotFound}
	}
	path, err := exec.LookPath(s.Argv[0])
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
	cmd := &exec.Cmd{Path: path, Args: s.Argv, Env: env, Stdin: f, Stdout: f, Stderr: stderr}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c.Close() // the program holds the connection now
	return cmd, nil
}

// Signal sends sig to every running program.
func (s *Spawn) Signal(sig os.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.procs {
		p.Signal(sig)
	}
}

// Running returns the number of running programs.
func (s *Spawn) Running() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.procs)
}
