package dbuspeer

import (
	"encoding/binary"
	"fmt"
	"io"

	"golang.org/x/sys/unix"
)

// Large bodies: a method call whose body is one byte array ("ay"), sent
// and received without the copies Send and Read make (Send marshals the
// body into the connection's buffer, Read copies it out of it). The
// sender writes the header and the array straight from the caller's slice
// (writev); the receiver reads the array straight into the caller's
// buffer. What remains is what D-Bus itself costs: the socket copies in
// and out of the kernel, and the bus's own.

// CallBytes sends the method call m with data as its body, marshalled as
// one "ay" (m.Body and m.Signature are ignored), and waits for the reply,
// whose FDs the caller closes. data is written from where it is.
func (c *Conn) CallBytes(m *Message, data []byte) (*Message, error) {
	if uint64(len(data)) > maxMessage {
		return nil, fmt.Errorf("dbus: byte array of %d bytes is over the message limit", len(data))
	}
	c.serial++
	hm := *m
	hm.Signature, hm.Body, hm.FDs = "ay", nil, nil
	c.out = appendMessage(c.out[:0], &hm, c.serial)
	binary.LittleEndian.PutUint32(c.out[4:], uint32(4+len(data))) // the body's length
	c.out = binary.LittleEndian.AppendUint32(c.out, uint32(len(data)))
	if err := c.writev(c.out, data); err != nil {
		return nil, err
	}
	return c.reply(c.serial)
}

// writev writes a then b in as few system calls as the socket takes.
func (c *Conn) writev(a, b []byte) error {
	for len(a)+len(b) > 0 {
		n, err := unix.Writev(c.fd, [][]byte{a, b})
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("write: %w", err)
		}
		if n < len(a) {
			a = a[n:]
			continue
		}
		b, a = b[n-len(a):], nil
	}
	return nil
}

// ReadBytes returns the next message. When its body is one "ay", the
// array is read into buf (grown when too small) and returned beside the
// message, whose Body is then nil (its Signature says "ay"); any other
// message comes as Read returns it, with a nil array.
func (c *Conn) ReadBytes(buf []byte) (*Message, []byte, error) {
	for {
		hl, total, err := headerLen(c.in)
		if err != nil {
			return nil, nil, err
		}
		if hl > 0 && len(c.in) >= hl+4 {
			m, nfds, err := parseMessage(c.in[:hl])
			if err != nil {
				return nil, nil, err
			}
			if m.Signature != "ay" || nfds != 0 {
				return c.readWhole(total)
			}
			n := int(binary.LittleEndian.Uint32(c.in[hl:]))
			if 4+n != total-hl {
				return nil, nil, fmt.Errorf("dbus: byte array of %d bytes in a body of %d", n, total-hl)
			}
			if cap(buf) < n {
				buf = make([]byte, n)
			}
			buf = buf[:n]
			have := copy(buf, c.in[hl+4:min(len(c.in), total)])
			c.in = c.in[:copy(c.in, c.in[hl+4+have:])]
			if err := c.readFull(buf[have:]); err != nil {
				return nil, nil, err
			}
			m.Body = nil
			return m, buf, nil
		}
		if err := c.fill(); err != nil {
			return nil, nil, err
		}
	}
}

// readWhole is Read for the message at the head of c.in, total bytes long.
func (c *Conn) readWhole(total int) (*Message, []byte, error) {
	if total > cap(c.in) {
		c.in = append(make([]byte, 0, total+4096), c.in...)
	}
	m, err := c.Read()
	return m, nil, err
}

// readFull reads exactly len(b) bytes from the socket into b. No fds
// arrive inside a byte array (a message's fds come with its first byte).
func (c *Conn) readFull(b []byte) error {
	for len(b) > 0 {
		n, err := unix.Read(c.fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		b = b[n:]
	}
	return nil
}

// headerLen returns the length of the header (fixed part, fields and the
// padding to the body) and of the whole message at the head of b, or
// zeros while b does not yet hold the header.
func headerLen(b []byte) (hl, total int, err error) {
	total, err = messageLen(b)
	if err != nil || total == 0 {
		return 0, 0, err
	}
	hl = (16 + int(binary.LittleEndian.Uint32(b[12:])) + 7) &^ 7
	if len(b) < hl {
		return 0, 0, nil
	}
	return hl, total, nil
}

// Checksum reads every byte of b: the sum of its little-endian 64-bit
// words and of its trailing bytes. A receiver of a large body returns it
// so that the sender knows every byte was read.
func Checksum(b []byte) uint64 {
	var s0, s1, s2, s3 uint64
	for len(b) >= 32 {
		s0 += binary.LittleEndian.Uint64(b)
		s1 += binary.LittleEndian.Uint64(b[8:])
		s2 += binary.LittleEndian.Uint64(b[16:])
		s3 += binary.LittleEndian.Uint64(b[24:])
		b = b[32:]
	}
	s := s0 + s1 + s2 + s3
	for ; len(b) >= 8; b = b[8:] {
		s += binary.LittleEndian.Uint64(b)
	}
	for _, c := range b {
		s += uint64(c)
	}
	return s
}

// Uint64Body marshals one uint64 as a body of signature "t".
func Uint64Body(v uint64) []byte {
	return binary.LittleEndian.AppendUint64(nil, v)
}

// BodyUint64 returns the argument of a body of signature "t".
func (m *Message) BodyUint64() (uint64, error) {
	if m.Signature != "t" || len(m.Body) < 8 {
		return 0, fmt.Errorf("dbus: body of signature %q and %d bytes is not one uint64", m.Signature, len(m.Body))
	}
	return binary.LittleEndian.Uint64(m.Body), nil
}

// Sink is a service on a bus that answers every method call whose body is
// one "ay" with the Checksum of the array (signature "t"), after reading
// the whole array into one buffer it reuses; other calls get an empty
// return.
type Sink struct{ *Echo }

// StartSink connects to the bus at path, takes name (unless "") and
// answers calls until Close.
func StartSink(path, name string) (*Sink, error) {
	e, err := startService(path, name, sink)
	if err != nil {
		return nil, err
	}
	return &Sink{e}, nil
}

func sink(c *Conn) error {
	var buf []byte
	for {
		m, data, err := c.ReadBytes(buf)
		if err != nil {
			return err
		}
		if data != nil {
			buf = data
		}
		if m.Type == TypeMethodCall && m.Flags&FlagNoReplyExpected == 0 {
			r := &Message{Type: TypeMethodReturn, ReplySerial: m.Serial, Destination: m.Sender}
			if m.Signature == "ay" {
				r.Signature, r.Body = "t", Uint64Body(Checksum(data))
			}
			_, err = c.Send(r)
		}
		m.Close()
		if err != nil {
			return err
		}
	}
}
