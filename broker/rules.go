package broker

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/user"
	"strconv"
	"strings"
)

// Rules decide which peers (by SO_PEERCRED uid and gid) may request which
// sockets: the broker's default Policy. The first rule that matches a request decides it; when none
// matches, ports 1024 and above (and port 0, a free port) are allowed to
// everyone and lower ports are denied. The zero Rules (or nil) is that
// default alone.
//
// A rules file has one rule per line; '#' starts a comment:
//
//	allow uid=www-data proto=tcp port=80,443
//	allow gid=bind port=53
//	deny  uid=nobody
//	allow uid=0 port=1-1023 addr=127.0.0.0/8
//
// Every key is optional and matches anything when absent: uid= and gid=
// take numbers or names (comma-separated), proto= tcp or udp, port= ports
// or ranges (80,8000-8099), addr= addresses or prefixes (0.0.0.0,
// 10.0.0.0/8, ::/0). gid is the peer's primary group as SO_PEERCRED
// reports it; supplementary groups are not considered.
type Rules struct {
	list []Rule
}

// Rule is one line of a rules file.
type Rule struct {
	Allow  bool
	UIDs   []int          // empty: any uid
	GIDs   []int          // empty: any gid
	Proto  Proto          // 0: any
	Ports  [][2]uint16    // inclusive ranges; empty: any port
	Addrs  []netip.Prefix // empty: any address
	Line   int            // line number in the file, for messages
	Source string         // the line as written
}

// DefaultMinPort is the lowest port the default policy allows without a rule.
const DefaultMinPort = 1024

// Check decides whether a peer with uid and gid may have the socket.
func (r *Rules) Check(uid, gid int, p Proto, addr netip.AddrPort) Decision {
	if r != nil {
		for i := range r.list {
			ru := &r.list[i]
			if ru.matches(uid, gid, p, addr) {
				verb := "denied"
				if ru.Allow {
					verb = "allowed"
				}
				return Decision{ru.Allow, fmt.Sprintf("%s by rule at line %d (%s)", verb, ru.Line, ru.Source)}
			}
		}
	}
	if port := addr.Port(); port == 0 || port >= DefaultMinPort {
		return Decision{true, "allowed by default (port 1024 or above)"}
	}
	return Decision{false, fmt.Sprintf("port %d is below %d and no rule allows it for uid %d gid %d", addr.Port(), DefaultMinPort, uid, gid)}
}

// Len returns the number of rules.
func (r *Rules) Len() int {
	if r == nil {
		return 0
	}
	return len(r.list)
}

func (ru *Rule) matches(uid, gid int, p Proto, addr netip.AddrPort) bool {
	if len(ru.UIDs) > 0 && !contains(ru.UIDs, uid) {
		return false
	}
	if len(ru.GIDs) > 0 && !contains(ru.GIDs, gid) {
		return false
	}
	if ru.Proto != 0 && ru.Proto != p {
		return false
	}
	if len(ru.Ports) > 0 {
		ok := false
		for _, pr := range ru.Ports {
			if addr.Port() >= pr[0] && addr.Port() <= pr[1] {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(ru.Addrs) > 0 {
		ok := false
		for _, pf := range ru.Addrs {
			if pf.Contains(addr.Addr()) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func contains(l []int, v int) bool {
	for _, x := range l {
		if x == v {
			return true
		}
	}
	return false
}

// LoadRules reads a rules file.
func LoadRules(path string) (*Rules, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	defer f.Close()
	r, err := ParseRules(f)
	if err != nil {
		return nil, fmt.Errorf("rules %s: %w", path, err)
	}
	return r, nil
}

// ParseRules parses rules in the file format described at Rules. User and
// group names are resolved now; an unknown one is an error.
func ParseRules(rd io.Reader) (*Rules, error) {
	r := &Rules{}
	sc := bufio.NewScanner(rd)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		ru := Rule{Line: n, Source: strings.Join(fields, " ")}
		switch fields[0] {
		case "allow":
			ru.Allow = true
		case "deny":
		default:
			return nil, fmt.Errorf("line %d: rule starts with %q, want allow or deny", n, fields[0])
		}
		seen := map[string]bool{}
		for _, f := range fields[1:] {
			k, v, ok := strings.Cut(f, "=")
			if !ok || v == "" {
				return nil, fmt.Errorf("line %d: %q is not key=value", n, f)
			}
			if seen[k] {
				return nil, fmt.Errorf("line %d: %s= given twice", n, k)
			}
			seen[k] = true
			var err error
			switch k {
			case "uid":
				ru.UIDs, err = parseIDs(v, lookupUser)
			case "gid":
				ru.GIDs, err = parseIDs(v, lookupGroup)
			case "proto":
				switch v {
				case "tcp":
					ru.Proto = TCP
				case "udp":
					ru.Proto = UDP
				default:
					err = fmt.Errorf("proto %q is neither tcp nor udp", v)
				}
			case "port":
				ru.Ports, err = parsePorts(v)
			case "addr":
				ru.Addrs, err = parsePrefixes(v)
			default:
				err = fmt.Errorf("unknown key %q (want uid, gid, proto, port, addr)", k)
			}
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", n, err)
			}
		}
		r.list = append(r.list, ru)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return r, nil
}

func lookupUser(name string) (string, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return "", err
	}
	return u.Uid, nil
}

func lookupGroup(name string) (string, error) {
	g, err := user.LookupGroup(name)
	if err != nil {
		return "", err
	}
	return g.Gid, nil
}

func parseIDs(v string, lookup func(string) (string, error)) ([]int, error) {
	var ids []int
	for _, s := range strings.Split(v, ",") {
		if s == "" {
			return nil, fmt.Errorf("empty id in %q", v)
		}
		if _, err := strconv.Atoi(s); err != nil {
			id, lerr := lookup(s)
			if lerr != nil {
				return nil, fmt.Errorf("unknown user or group %q: %v", s, lerr)
			}
			s = id
		}
		id, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("bad id %q", s)
		}
		ids = append(ids, int(id))
	}
	return ids, nil
}

func parsePorts(v string) ([][2]uint16, error) {
	var out [][2]uint16
	for _, s := range strings.Split(v, ",") {
		lo, hi, isRange := strings.Cut(s, "-")
		if !isRange {
			hi = lo
		}
		a, err1 := strconv.ParseUint(lo, 10, 16)
		b, err2 := strconv.ParseUint(hi, 10, 16)
		if err1 != nil || err2 != nil || a > b {
			return nil, fmt.Errorf("bad port or range %q (want N or N-M, 0..65535)", s)
		}
		out = append(out, [2]uint16{uint16(a), uint16(b)})
	}
	return out, nil
}

func parsePrefixes(v string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range strings.Split(v, ",") {
		if strings.Contains(s, "/") {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("bad address prefix %q: %v", s, err)
			}
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("bad address %q: %v", s, err)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}
