package ipc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/porter-ipc/porter/fdpass"
	"golang.org/x/sys/unix"
)

// The channel offer (docs/protocol-ipc.md): "PCHN", version, type, tag.
const (
	offerLen     = 8
	offerVersion = 1
)

var offerMagic = [4]byte{'P', 'C', 'H', 'N'}

// ErrBadOffer is the cause of an error about a malformed channel offer.
// The connection's framing is lost after one: close it.
var ErrBadOffer = errors.New("ipc: malformed channel offer")

// Offer is the content of a channel offer.
type Offer struct {
	Type int    // unix.SOCK_STREAM or unix.SOCK_SEQPACKET
	Tag  uint16 // the application's name for the channel
}

// EncodeOffer returns the 8 bytes of a channel offer.
func EncodeOffer(o Offer) []byte {
	b := make([]byte, 0, offerLen)
	b = append(b, offerMagic[:]...)
	b = append(b, offerVersion, byte(o.Type))
	return binary.BigEndian.AppendUint16(b, o.Tag)
}

// DecodeOffer parses the 8 bytes of a channel offer.
func DecodeOffer(b []byte) (Offer, error) {
	if len(b) != offerLen {
		return Offer{}, fmt.Errorf("%w: %d bytes, want %d", ErrBadOffer, len(b), offerLen)
	}
	if [4]byte(b[:4]) != offerMagic {
		return Offer{}, fmt.Errorf("%w: magic %q", ErrBadOffer, b[:4])
	}
	if b[4] != offerVersion {
		return Offer{}, fmt.Errorf("%w: version %d, want %d", ErrBadOffer, b[4], offerVersion)
	}
	t := int(b[5])
	if t != unix.SOCK_STREAM && t != unix.SOCK_SEQPACKET {
		return Offer{}, fmt.Errorf("%w: socket type %d", ErrBadOffer, t)
	}
	return Offer{Type: t, Tag: binary.BigEndian.Uint16(b[6:])}, nil
}

// OfferChannel creates an unbound socket pair of type typ (unix.SOCK_STREAM
// or unix.SOCK_SEQPACKET), passes one end to the peer in a channel offer
// with tag, and returns the other end, which the caller owns. The peer
// takes its end with AcceptChannel. This is how a server gives a client a
// second channel, say for asynchronous notifications, beside the
// request/response stream.
func (c *Conn) OfferChannel(typ int, tag uint16) (*fdpass.Conn, error) {
	if typ != unix.SOCK_STREAM && typ != unix.SOCK_SEQPACKET {
		return nil, &OpError{Op: "offer channel", Path: c.path(), Err: fmt.Errorf("socket type %d: %w", typ, unix.EINVAL)}
	}
	mine, theirs, err := fdpass.Socketpair(typ)
	if err != nil {
		return nil, err
	}
	defer theirs.Close()
	f, ok := theirs.Socket().(*os.File)
	if !ok {
		mine.Close()
		return nil, &OpError{Op: "offer channel", Path: c.path(), Err: fmt.Errorf("socket pair end is %T, want *os.File: %w", theirs.Socket(), unix.EINVAL)}
	}
	if _, err := c.fc.Send(EncodeOffer(Offer{Type: typ, Tag: tag}), f); err != nil {
		mine.Close()
		return nil, err
	}
	return mine, nil
}

// AcceptChannel reads a channel offer from the connection and returns the
// channel it carries, owned by the caller, and the offer's tag. A
// malformed offer fails with ErrBadOffer and closes whatever came with it.
func (c *Conn) AcceptChannel() (*fdpass.Conn, Offer, error) {
	var b [offerLen]byte
	m, err := c.fc.RecvFull(b[:], 1)
	if errors.Is(err, fdpass.ErrTruncated) {
		return nil, Offer{}, fmt.Errorf("%w: %w", ErrBadOffer, err) // more than one fd, or too much data
	}
	if err != nil {
		return nil, Offer{}, err
	}
	o, err := DecodeOffer(b[:])
	if err == nil && len(m.Files) != 1 {
		err = fmt.Errorf("%w: %d fds, want 1", ErrBadOffer, len(m.Files))
	}
	if err != nil {
		m.Close()
		return nil, Offer{}, err
	}
	ch, err := fdpass.NewConn(m.Files[0]) // closes the file when it fails
	if err != nil {
		return nil, Offer{}, fmt.Errorf("%w: %w", ErrBadOffer, err)
	}
	if ch.Type() != o.Type {
		ch.Close()
		return nil, Offer{}, fmt.Errorf("%w: announced type %d, socket is %d", ErrBadOffer, o.Type, ch.Type())
	}
	return ch, o, nil
}
