package ipc

import (
	"net"
	"os"
	"strconv"
	"time"

	"github.com/porter-ipc/porter/access"
	"github.com/porter-ipc/porter/fdpass"
)

// Conn is one connection of a local service, on either end. It reads and
// writes like a net.Conn and passes fds with Send and Recv (fdpass).
// Close closes the socket; a Server closes its Conns when the handler
// returns.
type Conn struct {
	uc   *net.UnixConn
	fc   *fdpass.Conn
	peer fdpass.Cred

	// server side only
	remotePath string
	localPath  string
	connNum    int
	decided    bool // a Policy decided
	decision   access.Decision
}

func newConn(uc *net.UnixConn) (*Conn, error) {
	cred, err := fdpass.PeerCred(uc)
	if err != nil {
		uc.Close()
		return nil, err
	}
	fc, err := fdpass.NewConn(uc) // closes uc when it fails
	if err != nil {
		return nil, err
	}
	return &Conn{uc: uc, fc: fc, peer: cred}, nil
}

// Peer returns the peer's credentials as the kernel saw them when it
// connected (SO_PEERCRED): on the server the client's, on the client the
// server's. They cannot be forged by the peer.
func (c *Conn) Peer() fdpass.Cred { return c.peer }

// Access returns the Policy's decision for this client and whether a
// policy decided at all (Server.Policy or Server.Rules set). Server side
// only.
func (c *Conn) Access() (access.Decision, bool) { return c.decision, c.decided }

// ConnNum returns how many connections from the client's uid the server
// had, this one included (IPCCONNNUM). Server side only.
func (c *Conn) ConnNum() int { return c.connNum }

// RemotePath returns the path the client bound its socket to; empty when
// it is unbound (the usual case) or bound to an abstract address
// (IPCREMOTEPATH).
func (c *Conn) RemotePath() string { return c.remotePath }

// Env returns the UCSPI environment a program serving this connection
// gets, in the order s6 sets it: PROTO=IPC, IPCREMOTEEUID, IPCREMOTEEGID,
// IPCCONNNUM, IPCREMOTEPATH; then, when access rules were looked up, the
// allowing rule's env changes and IPCLOCALPATH (also with a Policy of
// the embedder's, and its Env). Server side only.
//
// IPCREMOTEPATH is the path the client bound its socket to, and empty for
// an unbound client or one bound to an abstract address: s6-ipcserver
// copies the address as a C string, which ends at an abstract address's
// leading NUL, and porter does the same.
func (c *Conn) Env() []access.EnvChange {
	env := []access.EnvChange{
		{Name: "PROTO", Value: "IPC"},
		{Name: "IPCREMOTEEUID", Value: strconv.Itoa(c.peer.UID)},
		{Name: "IPCREMOTEEGID", Value: strconv.Itoa(c.peer.GID)},
		{Name: "IPCCONNNUM", Value: strconv.Itoa(c.connNum)},
		{Name: "IPCREMOTEPATH", Value: c.remotePath},
	}
	if c.decided {
		env = append(env, c.decision.Env...)
		env = append(env, access.EnvChange{Name: "IPCLOCALPATH", Value: c.localPath})
	}
	return env
}

// Environ returns base with Env applied: the environment of a program
// that serves this connection.
func (c *Conn) Environ(base []string) []string { return access.ApplyEnv(base, c.Env()) }

// Read reads bytes from the connection; fds that come with them are
// closed by the kernel. Use Recv to receive fds.
func (c *Conn) Read(b []byte) (int, error) { return c.uc.Read(b) }

// Write writes bytes to the connection.
func (c *Conn) Write(b []byte) (int, error) { return c.uc.Write(b) }

// Send writes b with the fds of files (see fdpass.Conn.Send); it borrows
// files.
func (c *Conn) Send(b []byte, files ...*os.File) (int, error) { return c.fc.Send(b, files...) }

// Recv reads one message and at most maxFDs fds; the returned Msg's Files
// belong to the caller (see fdpass.Conn.Recv).
func (c *Conn) Recv(b []byte, maxFDs int) (fdpass.Msg, error) { return c.fc.Recv(b, maxFDs) }

// RecvFull reads exactly len(b) bytes and their fds (see
// fdpass.Conn.RecvFull).
func (c *Conn) RecvFull(b []byte, maxFDs int) (fdpass.Msg, error) { return c.fc.RecvFull(b, maxFDs) }

// SetDeadline sets the read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error { return c.uc.SetDeadline(t) }

// SetReadDeadline sets the read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.uc.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.uc.SetWriteDeadline(t) }

// CloseWrite shuts down the writing side, so the peer reads end of stream.
func (c *Conn) CloseWrite() error { return c.uc.CloseWrite() }

// UnixConn returns the underlying socket, still owned by c.
func (c *Conn) UnixConn() *net.UnixConn { return c.uc }

// Close closes the connection.
func (c *Conn) Close() error { return c.fc.Close() }

// Dial connects to the local service at path.
func Dial(path string) (*Conn, error) {
	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	return newConn(uc)
}
