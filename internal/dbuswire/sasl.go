package dbuswire

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
)

// Limits of one authentication conversation: the longest line, the
// rejected or erroneous commands before the connection is closed, and the
// commands in all (which bounds what Feed writes back).
const (
	maxAuthLine     = 1024
	maxAuthFailures = 8
	maxAuthCommands = 32
)

// ErrAuth is wrapped by every error Feed returns: the connection is to be
// closed.
var ErrAuth = errors.New("dbuswire: authentication failed")

type authState uint8

const (
	waitAuth  authState = iota // WaitingForAuth
	waitData                   // WaitingForData, after AUTH EXTERNAL without a response
	waitBegin                  // WaitingForBegin, after OK
	authDone                   // BEGIN received
)

// Server is the server side of the D-Bus authentication protocol with the
// one mechanism EXTERNAL: the identity is the peer's uid from
// SO_PEERCRED, and a client may only confirm it. The zero value with its
// exported fields set is ready; a Server serves one connection.
type Server struct {
	UID    uint32 // the peer's uid from SO_PEERCRED: the only identity accepted
	GUID   string // the server's 32 hex digits, sent in OK
	UnixFD bool   // whether NEGOTIATE_UNIX_FD may be agreed

	state    authState
	started  bool // the leading NUL byte arrived
	buf      []byte
	failures int
	commands int
	fds      bool
}

// Feed takes bytes from the client (the leading NUL byte included, lines
// ending in \r\n, possibly several lines or a partial line per call) and
// returns what to write back. done is true once BEGIN was received; rest
// is the bytes after BEGIN\r\n, which are the start of the message stream
// (it may alias in). err, which wraps ErrAuth, means: write out, then close
// the connection. Lines are bounded to 1024 bytes, failed attempts to 8
// and commands to 32.
func (s *Server) Feed(in []byte) (out []byte, done bool, rest []byte, err error) {
	if s.state == authDone {
		return nil, false, nil, fmt.Errorf("%w: data after BEGIN fed to the authenticator", ErrAuth)
	}
	if !s.started {
		if len(in) == 0 {
			return nil, false, nil, nil
		}
		if in[0] != 0 {
			return nil, false, nil, fmt.Errorf("%w: first byte %q is not the NUL credentials byte", ErrAuth, in[0])
		}
		s.started = true
		in = in[1:]
	}
	data := in
	if len(s.buf) > 0 {
		s.buf = append(s.buf, in...)
		data = s.buf
	}
	for {
		i := bytes.Index(data, []byte("\r\n"))
		if i < 0 {
			if len(data) > maxAuthLine {
				return out, false, nil, fmt.Errorf("%w: line longer than %d bytes", ErrAuth, maxAuthLine)
			}
			s.buf = append(s.buf[:0], data...)
			return out, false, nil, nil
		}
		if i > maxAuthLine {
			return out, false, nil, fmt.Errorf("%w: line longer than %d bytes", ErrAuth, maxAuthLine)
		}
		line := data[:i]
		data = data[i+2:]
		s.commands++
		if s.commands > maxAuthCommands {
			return out, false, nil, fmt.Errorf("%w: more than %d commands", ErrAuth, maxAuthCommands)
		}
		out, err = s.command(out, line)
		if err != nil {
			return out, false, nil, err
		}
		if s.state == authDone {
			s.buf = nil
			return out, true, data, nil
		}
	}
}

// UnixFDAgreed reports whether the client asked for fd passing and the
// server agreed.
func (s *Server) UnixFDAgreed() bool { return s.fds }

// command handles one line and appends the answer to out.
func (s *Server) command(out, line []byte) ([]byte, error) {
	cmd, arg, hasArg := bytes.Cut(line, []byte(" "))
	switch string(cmd) {
	case "BEGIN":
		if s.state == waitBegin {
			s.state = authDone
			return out, nil
		}
		return out, fmt.Errorf("%w: BEGIN before authentication", ErrAuth)
	case "ERROR":
		return s.reject(out)
	case "CANCEL":
		// The spec's WaitingForAuth has nothing to cancel: an error there.
		if s.state != waitAuth {
			return s.reject(out)
		}
	case "AUTH":
		if s.state != waitAuth {
			break
		}
		mech, resp, hasResp := bytes.Cut(arg, []byte(" "))
		if !hasArg || string(mech) != "EXTERNAL" {
			return s.reject(out)
		}
		if !hasResp {
			s.state = waitData
			return append(out, "DATA\r\n"...), nil
		}
		return s.external(out, resp)
	case "DATA":
		if s.state != waitData {
			break
		}
		return s.external(out, arg)
	case "NEGOTIATE_UNIX_FD":
		if s.state != waitBegin {
			break
		}
		if !s.UnixFD {
			return s.fail(out, "ERROR \"fd passing is not supported on this connection\"\r\n")
		}
		s.fds = true
		return append(out, "AGREE_UNIX_FD\r\n"...), nil
	}
	return s.fail(out, "ERROR \"unexpected command\"\r\n")
}

// external checks the hex-encoded decimal uid a client claims (empty: it
// claims none, and is the peer its credentials say).
func (s *Server) external(out, resp []byte) ([]byte, error) {
	if len(resp) > 0 {
		id, err := hex.DecodeString(string(resp))
		if err != nil || len(id) == 0 || len(id) > 10 {
			return s.reject(out)
		}
		for _, c := range id {
			if !isDigit(c) {
				return s.reject(out)
			}
		}
		uid, err := strconv.ParseUint(string(id), 10, 32)
		if err != nil || uint32(uid) != s.UID {
			return s.reject(out)
		}
	}
	s.state = waitBegin
	out = append(out, "OK "...)
	out = append(out, s.GUID...)
	return append(out, "\r\n"...), nil
}

// reject answers REJECTED and returns to waiting for AUTH.
func (s *Server) reject(out []byte) ([]byte, error) {
	s.state = waitAuth
	s.fds = false
	return s.fail(out, "REJECTED EXTERNAL\r\n")
}

// fail counts a failure and appends the answer, or ends the conversation
// after too many.
func (s *Server) fail(out []byte, answer string) ([]byte, error) {
	s.failures++
	if s.failures > maxAuthFailures {
		return out, fmt.Errorf("%w: %d failed attempts", ErrAuth, s.failures)
	}
	return append(out, answer...), nil
}
