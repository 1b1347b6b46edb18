package cap

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/porter-ipc/porter/fdpass"
	"github.com/porter-ipc/porter/internal/fdutil"
	"golang.org/x/sys/unix"
)

// link is one end of a session: frames in, frames out, with their fds.
// One goroutine reads; writers take wmu, so a frame and its FDS packets
// are never interleaved with another frame.
type link struct {
	c    *fdpass.Conn
	sock *os.File
	wmu  sync.Mutex
	buf  []byte // the reader's buffer, MaxFrame bytes
	wbuf []byte // the writers' buffer, under wmu
}

func newLink(c *fdpass.Conn) *link {
	return &link{c: c, sock: c.Socket().(*os.File)}
}

// frame is one received frame. name and body are slices of the link's
// buffer, valid until the next read; files belong to the reader.
type frame struct {
	header
	name, body []byte
	files      []*os.File
}

func (f *frame) closeFiles() {
	for _, x := range f.files {
		x.Close()
	}
	f.files = nil
}

// fdLimitError is a frame the kernel could not install the fds of
// (EMFILE, ENFILE): its data arrived, its fds are closed.
type fdLimitError struct {
	h   header
	err error
}

func (e *fdLimitError) Error() string { return e.err.Error() }
func (e *fdLimitError) Unwrap() error { return e.err }

// read reads the next frame and its FDS packets. It returns io.EOF at end
// of file (or an empty packet), an error wrapping errMalformed for a
// frame that breaks the rules (its fds closed), an *fdLimitError when
// the process had no room for the fds, and other errors as fdpass gives
// them.
func (l *link) read() (frame, error) {
	if l.buf == nil {
		l.buf = make([]byte, MaxFrame)
	}
	m, err := l.c.Recv(l.buf, fdsPerPacket)
	if err != nil {
		if errors.Is(err, fdpass.ErrFDLimit) {
			// The data is in the buffer; say which frame it was when
			// it parses (its length is the header's word).
			h, _, _, perr := parseFrame(clip(l.buf))
			if perr != nil {
				return frame{}, err
			}
			return frame{}, &fdLimitError{h: h, err: err}
		}
		if errors.Is(err, fdpass.ErrTruncated) {
			return frame{}, malformed("too large or too many fds: %v", err)
		}
		if errors.Is(err, unix.ECONNRESET) {
			return frame{}, io.EOF
		}
		return frame{}, err
	}
	h, name, body, err := parseFrame(l.buf[:m.N])
	if err != nil {
		m.Close()
		return frame{}, err
	}
	f := frame{header: h, name: name, body: body, files: m.Files}
	if h.typ == tFDS {
		f.closeFiles()
		return frame{}, malformed("FDS without a frame before it")
	}
	if len(f.files) > int(h.nfds) {
		f.closeFiles()
		return frame{}, malformed("%s: %d fds, header says %d", typeNames[h.typ], len(m.Files), h.nfds)
	}
	for len(f.files) < int(h.nfds) {
		var hb [headerLen]byte
		m, err := l.c.Recv(hb[:], fdsPerPacket)
		if err != nil {
			f.closeFiles()
			if err == io.EOF {
				return frame{}, malformed("end of file before all %d fds of the frame", h.nfds)
			}
			return frame{}, err
		}
		fh, _, _, perr := parseFrame(hb[:m.N])
		if perr == nil && (fh.typ != tFDS || int(fh.nfds) != len(m.Files) || len(f.files)+len(m.Files) > int(h.nfds)) {
			perr = malformed("%s where FDS was due", typeNames[fh.typ])
		}
		f.files = append(f.files, m.Files...)
		if perr != nil {
			f.closeFiles()
			return frame{}, perr
		}
	}
	return f, nil
}

// clip returns the part of buf a frame whose header is at its start
// claims, or buf's header alone when the claim does not fit.
func clip(buf []byte) []byte {
	if len(buf) < headerLen {
		return buf
	}
	h := header{
		nameLen: uint16(buf[6]) | uint16(buf[7])<<8,
		bodyLen: uint32(buf[16]) | uint32(buf[17])<<8 | uint32(buf[18])<<16 | uint32(buf[19])<<24,
	}
	n := uint64(headerLen) + uint64(h.nameLen) + uint64(h.bodyLen)
	if n > uint64(len(buf)) {
		return buf[:headerLen]
	}
	return buf[:n]
}

// write sends one frame with files (borrowed), splitting them over FDS
// packets beyond 253. When the kernel refuses with ETOOMANYREFS (too many
// fds in flight for the user), it waits (1 ms, doubling, at most 100 ms)
// and sends again, until ctx ends; then the error is FD_LIMIT. A deadline
// of ctx bounds a write the peer does not read either.
func (l *link) write(ctx context.Context, h header, name string, body []byte, files []*os.File) error {
	if len(files) > MaxFDs {
		return &Error{Code: TooLarge, Msg: "more than 1024 fds"}
	}
	if headerLen+len(name)+len(body) > MaxFrame {
		return &Error{Code: TooLarge, Msg: "frame longer than 65536 bytes"}
	}
	h.nfds = uint16(len(files))
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.wbuf = appendFrame(l.wbuf[:0], h, name, body)
	dl, hasDL := ctx.Deadline()
	if hasDL {
		l.sock.SetWriteDeadline(dl)
		defer l.sock.SetWriteDeadline(time.Time{})
	}
	first := files[:min(len(files), fdsPerPacket)]
	if err := l.send(ctx, l.wbuf, first); err != nil {
		return err
	}
	for rest := files[len(first):]; len(rest) > 0; {
		part := rest[:min(len(rest), fdsPerPacket)]
		rest = rest[len(part):]
		pkt := appendFrame(nil, header{typ: tFDS, nfds: uint16(len(part))}, "", nil)
		if err := l.send(ctx, pkt, part); err != nil {
			// Half a frame went: the session's framing is lost.
			l.c.Close()
			return err
		}
	}
	return nil
}

// send is one sendmsg with back-pressure on ETOOMANYREFS.
func (l *link) send(ctx context.Context, pkt []byte, files []*os.File) error {
	return retryRefs(ctx, func() error {
		_, err := l.c.Send(pkt, files...)
		return err
	})
}

// refsRetries counts the waits on ETOOMANYREFS (for tests).
var refsRetries atomic.Int64

// retryRefs calls send until it does not fail with ETOOMANYREFS, waiting
// 1 ms, doubling, at most 100 ms between tries, until ctx ends.
func retryRefs(ctx context.Context, send func() error) error {
	pause := time.Millisecond
	for {
		err := send()
		if err == nil || !errors.Is(err, unix.ETOOMANYREFS) {
			return err
		}
		refsRetries.Add(1)
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return &Error{Code: FDLimit, Msg: "fds in flight stayed over the limit until the deadline", Err: err}
		case <-t.C:
		}
		pause = min(2*pause, 100*time.Millisecond)
	}
}

// sendNow sends a frame without fds if the socket takes it at once, and
// drops it otherwise (REVOKED and CLOSE to a peer that does not read).
func (l *link) sendNow(h header) {
	pkt := appendFrame(nil, h, "", nil)
	fdutil.Control(l.sock, func(fd int) error {
		return unix.Sendto(fd, pkt, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, nil)
	})
}

// close closes the socket; a blocked reader or writer returns.
func (l *link) close() { l.c.Close() }
