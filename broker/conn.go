package broker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/porter-ipc/porter/fdpass"
	"golang.org/x/sys/unix"
)

type conn struct {
	fc   *fdpass.Conn
	cred fdpass.Cred
	refs map[*ref]struct{}

	// mu orders the answer to a request and the SHUTTING_DOWN that Close
	// sends, so that each request gets exactly one answer.
	mu   sync.Mutex
	busy bool // a request is being answered
	bye  bool // SHUTTING_DOWN was sent: the connection is over
}

// serve reads and answers c's messages in order until it closes or sends
// something malformed, then drops every reference c held. Every fd a
// message brought is closed before the next one is read.
func (s *Server) serve(c *conn) {
	defer s.wg.Done()
	log := s.log.With("pid", c.cred.PID, "uid", c.cred.UID)
	defer s.dropConn(c, log)
	buf := make([]byte, MaxMessage)
	for {
		m, err := c.fc.Recv(buf, 1)
		if err != nil {
			switch {
			case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.Is(err, os.ErrClosed), errors.Is(err, unix.ECONNRESET):
			case errors.Is(err, fdpass.ErrFDLimit):
				// The packet was read whole and the fd it carried was
				// closed (fdpass did both): the connection is in step.
				// Answer this one request and go on.
				if !s.answerFDShortage(c, log, err) {
					return
				}
				continue
			case errors.Is(err, fdpass.ErrTruncated):
				s.fatal(c, log, CodeTooLarge, fmt.Sprintf("message longer than %d bytes or carrying more than one fd", MaxMessage))
			default:
				s.warn(log, "connection read failed", "connection read failed", "err", err)
			}
			return
		}
		if !s.begin(c) {
			m.Close() // it was answered with SHUTTING_DOWN
			return
		}
		ok := s.handle(c, log, buf[:m.N], &m)
		if !s.end(c) || !ok {
			return
		}
	}
}

// answerFDShortage answers a message whose fd could not be received because this
// process is out of fds: INTERNAL with EMFILE (or ENFILE).
func (s *Server) answerFDShortage(c *conn, log *slog.Logger, err error) bool {
	errno := unix.EMFILE
	errors.As(err, &errno)
	s.warn(log, "fd shortage", "out of file descriptors: refused the fd a message carried", "errno", unix.ErrnoName(errno))
	if !s.begin(c) {
		return false
	}
	ok := s.send(c, encodeError(CodeInternal, errno, fmt.Sprintf(
		"the broker is out of file descriptors (%s) and could not receive the fd that came with the message; it was closed and nothing changed; retry later", unix.ErrnoName(errno))))
	return s.end(c) && ok
}

// handle answers one message. It closes every fd in m before it returns,
// on every path; false means the connection is over.
func (s *Server) handle(c *conn, log *slog.Logger, b []byte, m *fdpass.Msg) bool {
	defer m.Close()
	msg, err := decode(b)
	pe, _ := err.(*protoError) // decode's only error type
	if pe != nil && pe.code.Fatal() {
		s.fatal(c, log, pe.code, pe.text)
		return false
	}
	// A decoding error that is not fatal is an invalid REQUEST: msg is set.
	if pe == nil && !sentByClient(msg.Type) {
		s.fatal(c, log, CodeMalformed, fmt.Sprintf("message type %q is one the broker sends, not a client", msg.Type))
		return false
	}
	// Recv took at most one fd.
	if len(m.Files) > 0 && !mayCarryFD(msg.Type) {
		s.fatal(c, log, CodeMalformed, fmt.Sprintf("%q message carries an fd; only RELEASE-FD may", msg.Type))
		return false
	}
	if pe != nil {
		log.Info("invalid request", "err", pe.text)
		return s.send(c, encodeError(pe.code, defaultErrno(pe.code), pe.text))
	}
	var out []byte
	var file *os.File
	switch msg.Type {
	case msgRequest:
		out, file = s.request(c, log, &msg.Request)
	case msgPickup:
		out, file = s.pickup(c, log, msg.Token)
	case msgRelease:
		out = s.releaseToken(c, log, msg.Token)
	case msgReleaseFD:
		if len(m.Files) != 1 {
			s.fatal(c, log, CodeMalformed, "RELEASE-FD carries no fd")
			return false
		}
		out = s.releaseFile(c, log, m.Files[0])
	case msgList:
		return s.sendListing(c)
	}
	var serr error
	if file != nil {
		_, serr = c.fc.Send(out, file)
		file.Close() // the answer's own copy (entry.dup)
	} else {
		_, serr = c.fc.Send(out)
	}
	if serr != nil {
		// The client vanished mid-request; dropConn takes back what
		// it was granted.
		log.Info("reply failed; dropping the connection", "err", serr)
		return false
	}
	if len(out) >= headerLen+2 && out[1] == msgError && Code(binary.BigEndian.Uint16(out[headerLen:])) == CodeShuttingDown {
		c.mu.Lock()
		c.bye = true // that was the goodbye
		c.mu.Unlock()
		return false
	}
	return true
}

// begin marks c busy answering a request; false when the broker has
// already told c it is shutting down (that was the answer).
func (s *Server) begin(c *conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bye {
		return false
	}
	c.busy = true
	return true
}

// end marks c idle again; when the broker is stopping it sends
// SHUTTING_DOWN, the answer to c's next request, and says c is over.
func (s *Server) end(c *conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.busy = false
	if !s.stopping.Load() {
		return true
	}
	s.sayByeLocked(c)
	return false
}

// sayByeLocked sends SHUTTING_DOWN to c once. c.mu is held.
func (s *Server) sayByeLocked(c *conn) {
	if c.bye {
		return
	}
	c.bye = true
	c.fc.SetDeadline(time.Now().Add(byeTimeout))
	s.send(c, encodeError(CodeShuttingDown, defaultErrno(CodeShuttingDown), "the broker is stopping; it closes this connection and every reference it held"))
}

// byeTimeout bounds the SHUTTING_DOWN send to a client that reads nothing.
const byeTimeout = time.Second

// send sends b to c; false when that failed (the client is gone).
func (s *Server) send(c *conn, b []byte) bool {
	_, err := c.fc.Send(b)
	return err == nil
}

// fatal sends a fatal error; the caller then closes the connection.
func (s *Server) fatal(c *conn, log *slog.Logger, code Code, text string) {
	s.warn(log, "closing connection: "+code.String(), "closing connection", "reason", code.String(), "detail", text)
	s.send(c, encodeError(code, defaultErrno(code), text+"; closing the connection"))
}

// dropConn closes c and releases every reference it held.
func (s *Server) dropConn(c *conn, log *slog.Logger) {
	c.fc.Close()
	s.mu.Lock()
	n := len(c.refs)
	for r := range c.refs {
		s.releaseLocked(r)
	}
	s.usage[c.cred.UID].conns--
	s.forgetIfIdle(c.cred.UID)
	delete(s.conns, c)
	s.mu.Unlock()
	if n > 0 {
		log.Info("holder gone; references released", "refs", n)
	}
}
