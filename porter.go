// Package porter is the Go client of the porter broker: a server changes
// one line, net.Listen to porter.Listen, and gets its socket — port 80 or
// 53 included — from the broker instead of binding it, so it never needs
// privilege.
//
//	l, err := porter.Listen("tcp", ":80")      // was net.Listen
//	pc, err := porter.ListenPacket("udp", ":53") // was net.ListenPacket
//
// The process keeps one connection to the broker open for its lifetime;
// the broker counts this process as a holder of each socket until the
// listener is closed or the process exits, however it exits.
//
// A program started by `porter run` (or systemd) gets its sockets as fds
// 3, 4, … with LISTEN_FDS; Files, Listeners and PacketConns take them over.
//
// Sockets from the broker may be shared with other processes, which share
// one open file description with this one. The listeners here never set
// O_NONBLOCK on it (Go's net.FileListener would, and a blocking C program
// beside it would then fail with EAGAIN); see docs/broker.md.
package porter

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/porter-ipc/porter/broker"
)

// Sharing says with whom the broker may share a socket. It is not
// broker.Share: its zero value, ShareWithApp, is the sharing a restarting
// server needs, where broker.Share's zero value is broker.ShareNone, the
// value of the wire format.
type Sharing int

// Sharing modes. The zero value, ShareWithApp, shares the socket with
// other requests under the same application name, such as a second
// instance of the same program during a restart.
const (
	ShareWithApp    Sharing = iota // with requests of the same application name
	ShareWithNobody                // with nobody
	ShareWithAny                   // with anyone not asking for ShareWithNobody (ShareWithApp ones need the same name)
)

// Share is the old name of Sharing, which was easy to confuse with
// broker.Share although the two have different zero values.
//
// Deprecated: use Sharing.
type Share = Sharing

// The old names of the Sharing modes.
//
// Deprecated: use ShareWithApp, ShareWithNobody and ShareWithAny;
// broker.ShareApp, broker.ShareNone and broker.ShareAny have other values.
const (
	ShareApp  = ShareWithApp
	ShareNone = ShareWithNobody
	ShareAny  = ShareWithAny
)

// wire is s in the broker's terms.
func (s Sharing) wire() (broker.Share, error) {
	switch s {
	case ShareWithApp:
		return broker.ShareApp, nil
	case ShareWithNobody:
		return broker.ShareNone, nil
	case ShareWithAny:
		return broker.ShareAny, nil
	}
	return 0, fmt.Errorf("invalid Sharing %d", int(s))
}

// Config says how to reach the broker and how to request sockets. The zero
// Config is the one Listen and ListenPacket use.
type Config struct {
	Socket string  // broker control socket; "" means $PORTER_SOCKET or the default
	Share  Sharing // with whom the requested sockets may be shared
	App    string  // application name; "" means the program's base name
}

// Listen announces on a TCP address through the broker and returns a
// listener, like net.Listen. network is "tcp", "tcp4" or "tcp6"; address
// is "host:port" with host empty (0.0.0.0, or [::] for tcp6), "localhost"
// or an IP literal.
//
// Errors are *net.OpError values, as net.Listen's, with Op "listen"; a
// refusal from the broker wraps its *broker.Error, so that both
// errors.Is(err, broker.ErrConflict) and errors.Is(err, unix.EADDRINUSE)
// work.
func Listen(network, address string) (net.Listener, error) {
	return (&Config{}).Listen(network, address)
}

// ListenPacket is Listen for UDP: network "udp", "udp4" or "udp6".
func ListenPacket(network, address string) (net.PacketConn, error) {
	return (&Config{}).ListenPacket(network, address)
}

// Listen is the package-level Listen with c's settings. The result is a
// *Listener.
func (c *Config) Listen(network, address string) (net.Listener, error) {
	l, err := listen(c, network, address, broker.TCP, FileListener)
	if err != nil {
		return nil, err // not a nil *Listener in a non-nil interface
	}
	return l, nil
}

// ListenPacket is the package-level ListenPacket with c's settings. The
// result is a *PacketConn.
func (c *Config) ListenPacket(network, address string) (net.PacketConn, error) {
	pc, err := listen(c, network, address, broker.UDP, FilePacketConn)
	if err != nil {
		return nil, err
	}
	return pc, nil
}

// listen requests the socket, wraps a copy of it and makes the wrapper's
// Close release the reference.
func listen[T interface {
	*Listener | *PacketConn
	sharedPart() *shared
}](c *Config, network, address string, proto broker.Proto, wrap func(*os.File) (T, error)) (T, error) {
	ap, err := parseAddr(network, address, proto)
	if err != nil {
		return nil, opError("listen", network, nil, err)
	}
	g, cl, err := c.request(proto, ap, false)
	if err != nil {
		return nil, opError("listen", network, proto.NetAddr(ap), err)
	}
	defer g.File.Close()
	s, err := wrap(g.File)
	if err != nil {
		cl.Release(g.Token)
		return nil, opError("listen", network, proto.NetAddr(g.Addr), err)
	}
	path, tok := c.socket(), g.Token
	s.sharedPart().release = func() error { return releaseOn(path, tok) }
	s.sharedPart().token = tok
	return s, nil
}

// Prepare requests a socket for another process: it returns a token that
// any process may redeem once with Pickup before it expires (30 s by
// default). network is one of Listen's or ListenPacket's. Errors are
// *net.OpError values with Op "prepare".
func (c *Config) Prepare(network, address string) (token string, err error) {
	proto, ap, err := broker.ParseAddr(network, address)
	if err != nil {
		return "", opError("prepare", network, nil, err)
	}
	g, _, err := c.request(proto, ap, true)
	if err != nil {
		return "", opError("prepare", network, proto.NetAddr(ap), err)
	}
	return g.Token.String(), nil
}

// Pickup redeems a token from Prepare: the socket, held by this process
// until it releases the token or exits. The caller owns the file; wrap it
// with FileListener or FilePacketConn. Errors are *net.OpError values with
// Op "pickup".
func (c *Config) Pickup(token string) (*os.File, error) {
	t, err := broker.ParseToken(token)
	if err != nil {
		return nil, opError("pickup", "", nil, err)
	}
	var g *broker.Grant
	if _, err := onBroker(c.socket(), func(cl *broker.Client) (err error) {
		g, err = cl.Pickup(t)
		return err
	}); err != nil {
		return nil, opError("pickup", "", nil, err)
	}
	return g.File, nil
}

// Pickup is Config.Pickup with the default Config.
func Pickup(token string) (*os.File, error) { return (&Config{}).Pickup(token) }

// Release gives back the broker reference a token names: a prepared token
// nobody will pick up, or a picked-up socket this process is done with
// (Listener.Close and PacketConn.Close do this themselves). It does not
// close any file. Errors are *net.OpError values with Op "release".
func (c *Config) Release(token string) error {
	t, err := broker.ParseToken(token)
	if err == nil {
		err = releaseOn(c.socket(), t)
	}
	if err != nil {
		return opError("release", "", nil, err)
	}
	return nil
}

// Release is Config.Release with the default Config.
func Release(token string) error { return (&Config{}).Release(token) }

// opError wraps err as net.Listen does. Net and Addr come from the
// broker's *broker.Error when the caller has none; an *net.OpError from
// FileListener or FilePacketConn gets the address filled in.
func opError(op, network string, addr net.Addr, err error) error {
	var be *broker.Error
	if errors.As(err, &be) && be.Addr.IsValid() {
		if network == "" {
			network = be.Proto.String()
		}
		if addr == nil {
			addr = be.Proto.NetAddr(be.Addr)
		}
	}
	if oe, ok := err.(*net.OpError); ok {
		if oe.Addr == nil {
			oe.Addr = addr
		}
		return oe
	}
	return &net.OpError{Op: op, Net: network, Addr: addr, Err: err}
}

func (c *Config) socket() string {
	if c.Socket != "" {
		return c.Socket
	}
	return broker.DefaultSocket()
}

// request asks the broker for the socket at ap with c's settings.
func (c *Config) request(proto broker.Proto, ap netip.AddrPort, deferred bool) (*broker.Grant, *broker.Client, error) {
	share, err := c.Share.wire()
	if err != nil {
		return nil, nil, err
	}
	app := c.App
	if app == "" {
		app = filepath.Base(os.Args[0])
	}
	r := broker.Request{Proto: proto, Addr: ap, Share: share, App: app, Defer: deferred}
	var g *broker.Grant
	cl, err := onBroker(c.socket(), func(cl *broker.Client) (err error) {
		g, err = cl.Request(r)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return g, cl, nil
}

// ResolveAddr is broker.ParseAddr, which it was before the parsing moved
// to the package whose types it returns.
//
// Deprecated: use broker.ParseAddr.
func ResolveAddr(network, address string) (broker.Proto, netip.AddrPort, error) {
	return broker.ParseAddr(network, address)
}

// parseAddr is broker.ParseAddr for a network of protocol proto only.
func parseAddr(network, address string, proto broker.Proto) (netip.AddrPort, error) {
	p, ap, err := broker.ParseAddr(network, address)
	if err == nil && p != proto {
		err = fmt.Errorf("network %q: want %s, %s4 or %s6", network, proto, proto, proto)
	}
	return ap, err
}
