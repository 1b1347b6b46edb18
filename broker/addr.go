package broker

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// ParseAddr turns a network ("tcp", "tcp4", "tcp6", "udp", "udp4" or
// "udp6") and a "host:port" into the protocol and address a Request
// names, as porter.Listen and `porter run` read them: an empty host is
// 0.0.0.0 (:: for tcp6 and udp6), "localhost" the loopback address, other
// hosts must be IP literals (the broker binds addresses, not names), an
// IPv4-mapped IPv6 literal is IPv4 (and refused for tcp6 and udp6, as
// the broker refuses it), and the port may be a service name.
func ParseAddr(network, address string) (Proto, netip.AddrPort, error) {
	var proto Proto
	switch network {
	case "tcp", "tcp4", "tcp6":
		proto = TCP
	case "udp", "udp4", "udp6":
		proto = UDP
	default:
		return 0, netip.AddrPort{}, fmt.Errorf("network %q: want tcp, tcp4, tcp6, udp, udp4 or udp6", network)
	}
	base := network[:3]
	v6 := network == base+"6"
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return 0, netip.AddrPort{}, err
	}
	pn, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		p, lerr := net.LookupPort(base, port)
		if lerr != nil {
			return 0, netip.AddrPort{}, fmt.Errorf("bad port %q: %v", port, lerr)
		}
		pn = uint64(p)
	}
	var a netip.Addr
	switch host {
	case "":
		a = netip.IPv4Unspecified()
		if v6 {
			a = netip.IPv6Unspecified()
		}
	case "localhost":
		a = netip.MustParseAddr("127.0.0.1")
		if v6 {
			a = netip.IPv6Loopback()
		}
	default:
		a, err = netip.ParseAddr(host)
		if err != nil {
			return 0, netip.AddrPort{}, fmt.Errorf("host %q is not an IP address (porter binds addresses, not names): %v", host, err)
		}
		if a.Is4In6() && !v6 {
			a = a.Unmap() // as net.Listen: an IPv4 socket
		}
		if network == base+"4" && !a.Is4() || v6 && (a.Is4() || a.Is4In6()) {
			return 0, netip.AddrPort{}, fmt.Errorf("address %s does not belong to network %s", a, network)
		}
	}
	return proto, netip.AddrPortFrom(a, uint16(pn)), nil
}
