package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/porter-ipc/porter/broker"
	"golang.org/x/sys/unix"
)

// The broker's clients among porter's commands (run, ls, release) connect
// with dialBlocking and explain a round trip that timed out with
// explainWait, so that each bounds its waits by its --timeout the same
// way and says the same thing when a wait runs out.

// timeoutUsage is the help text of the --timeout flag of run, ls and
// release.
const timeoutUsage = "wait at most `DURATION` for the broker to accept the connection and to answer each request (0: no limit)"

// defaultTimeout is --timeout's default.
const defaultTimeout = 10 * time.Second

// dialBlocking connects to the broker with a blocking socket. porter run
// must not start Go's netpoller: it is about to place sockets on fds 3...,
// and the netpoller's epoll fd could sit there. With timeout > 0 the
// socket has SO_SNDTIMEO and SO_RCVTIMEO set (connect(2) on a Unix socket
// whose listener's backlog is full waits SO_SNDTIMEO), so neither the
// connect nor a round trip waits longer; a timeout is EAGAIN. ls and
// release use it too, for the same bounded waits.
func dialBlocking(path string, timeout time.Duration) (*broker.Client, int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, -1, os.NewSyscallError("socket", err)
	}
	if err := setTimeouts(fd, timeout); err != nil {
		unix.Close(fd)
		return nil, -1, err
	}
	for {
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		if err == unix.EAGAIN {
			return nil, -1, fmt.Errorf("connect to the broker at %s: it did not accept the connection within %v (its listen backlog is full: is porter up stopped or overloaded? --timeout sets the wait): %w",
				path, timeout, err)
		}
		return nil, -1, fmt.Errorf("connect to the broker at %s: %w (is porter up running? set %s or --socket)", path, err, broker.SocketEnv)
	}
	cl, err := broker.NewClient(os.NewFile(uintptr(fd), path))
	if err != nil {
		return nil, -1, err // NewClient closed fd
	}
	return cl, fd, nil
}

// setTimeouts sets fd's SO_SNDTIMEO and SO_RCVTIMEO to d (0: none).
func setTimeouts(fd int, d time.Duration) error {
	tv := unix.NsecToTimeval(d.Nanoseconds())
	for _, opt := range []int{unix.SO_SNDTIMEO, unix.SO_RCVTIMEO} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv); err != nil {
			return os.NewSyscallError("setsockopt", err)
		}
	}
	return nil
}

// explainWait turns a round trip that timed out (EAGAIN from SO_RCVTIMEO
// or SO_SNDTIMEO) into an error that says what the command waited for.
func explainWait(err error, path string, timeout time.Duration) error {
	if !errors.Is(err, unix.EAGAIN) {
		return err
	}
	return fmt.Errorf("the broker at %s did not answer within %v (is porter up stopped, e.g. by SIGSTOP, or stuck? --timeout sets the wait): %w", path, timeout, err)
}
