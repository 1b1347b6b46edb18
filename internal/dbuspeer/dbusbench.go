package dbuspeer

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// StartProcess runs a D-Bus bus of another kind than the two this package
// knows, such as porter's master with its D-Bus front door, as a Peer:
// the same benchmarks then drive it as they drive dbus-broker and
// dbus-daemon. newCmd gets the socket path to serve D-Bus on (in a fresh
// temporary directory, also the place for any other socket the bus
// needs) and returns the command, which must print one line on its
// standard output once the socket listens and must end on SIGTERM (Stop).
// PID is the command's process.
func StartProcess(kind string, newCmd func(path string) *exec.Cmd) (*Peer, error) {
	dir, err := os.MkdirTemp("", "porter-"+kind+"-")
	if err != nil {
		return nil, fmt.Errorf("dbuspeer: %w", err)
	}
	p := &Peer{Kind: kind, Path: filepath.Join(dir, "bus"), dir: dir, logPath: filepath.Join(dir, "log")}
	p.cmd = newCmd(p.Path)
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		p.cmd = nil
		return nil, p.fail(err)
	}
	if err := p.start(); err != nil {
		return nil, err
	}
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		return nil, p.fail(fmt.Errorf("waiting for it to listen: %w", err))
	}
	p.PID = p.cmd.Process.Pid
	return p, nil
}

// SendAll writes the messages in one write, with the next serials, which
// it returns: a bus then finds them together in its socket, as it does a
// busy client's. Their FDs stay the caller's.
func (c *Conn) SendAll(ms ...*Message) ([]uint32, error) {
	c.out = c.out[:0]
	var fds []int
	serials := make([]uint32, len(ms))
	for i, m := range ms {
		c.serial++
		serials[i] = c.serial
		c.out = appendMessage(c.out, m, c.serial)
		fds = append(fds, m.FDs...)
	}
	return serials, c.write(c.out, fds)
}

// Reply reads until the reply to serial, as Call does after sending.
func (c *Conn) Reply(serial uint32) (*Message, error) { return c.reply(serial) }

// WriteRaw writes b, bytes of whole messages marshalled by the caller
// (such as a big-endian one, which Send does not make), with serials the
// caller chose.
func (c *Conn) WriteRaw(b []byte) error { return c.write(b, nil) }
