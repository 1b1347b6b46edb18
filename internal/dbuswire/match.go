package dbuswire

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// maxRule is the longest match rule accepted, as dbus-daemon's limit.
const maxRule = 1024

// maxArgs is the number of body arguments a rule may test (arg0..arg63).
const maxArgs = 64

// Rule is a parsed match rule (the D-Bus specification's "Match Rules").
// Empty fields match anything.
type Rule struct {
	Type                                           byte // 0: any
	Sender, Interface, Member, Path, PathNamespace string
	Destination, Arg0Namespace                     string
	Args                                           map[int]string // argN: arg N is this STRING
	ArgPaths                                       map[int]string // argNpath: arg N (STRING or OBJECT_PATH) is this path, or a path prefix either way
	Eavesdrop                                      bool           // eavesdrop='true'; Match does not look at it
}

var ruleTypes = map[string]byte{
	"method_call": TypeMethodCall, "method_return": TypeMethodReturn,
	"error": TypeError, "signal": TypeSignal,
}

var ruleTypeNames = [...]string{TypeMethodCall: "method_call", TypeMethodReturn: "method_return",
	TypeError: "error", TypeSignal: "signal"}

// ParseRule parses a match rule: comma-separated key='value' pairs with
// the keys type, sender, interface, member, path, path_namespace,
// destination, arg0..arg63, arg0path..arg63path, arg0namespace and
// eavesdrop. A value is quoted with apostrophes; outside quotes \' is an
// apostrophe and other characters stand for themselves. Every value is
// validated, and a key given twice is an error.
func ParseRule(s string) (*Rule, error) {
	if len(s) > maxRule {
		return nil, fmt.Errorf("dbuswire: match rule of %d bytes is over the %d-byte limit", len(s), maxRule)
	}
	return parseRule(s)
}

// parseRule is ParseRule without the length limit, which a rule's
// canonical text (all values quoted) may exceed when its original did not.
func parseRule(s string) (*Rule, error) {
	r := &Rule{}
	seen := map[string]bool{}
	i := 0
	for {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i == len(s) {
			break
		}
		eq := strings.IndexByte(s[i:], '=')
		if eq <= 0 {
			return nil, fmt.Errorf("dbuswire: match rule %q: key without '=' at byte %d", s, i)
		}
		key := s[i : i+eq]
		i += eq + 1
		var val []byte
		quoted := false
	value:
		for ; i < len(s); i++ {
			c := s[i]
			switch {
			case quoted:
				if c == '\'' {
					quoted = false
				} else {
					val = append(val, c)
				}
			case c == '\'':
				quoted = true
			case c == '\\' && i+1 < len(s) && s[i+1] == '\'':
				val = append(val, '\'')
				i++
			case c == ',':
				i++
				break value
			default:
				val = append(val, c)
			}
		}
		if quoted {
			return nil, fmt.Errorf("dbuswire: match rule %q: unbalanced quote in the value of %s", s, key)
		}
		if seen[key] {
			return nil, fmt.Errorf("dbuswire: match rule %q: %s given twice", s, key)
		}
		seen[key] = true
		if err := r.set(key, string(val)); err != nil {
			return nil, fmt.Errorf("dbuswire: match rule %q: %w", s, err)
		}
	}
	if r.Path != "" && r.PathNamespace != "" {
		return nil, fmt.Errorf("dbuswire: match rule %q: path and path_namespace together", s)
	}
	_, arg0 := r.Args[0]
	_, arg0path := r.ArgPaths[0]
	if r.Arg0Namespace != "" && (arg0 || arg0path) {
		return nil, fmt.Errorf("dbuswire: match rule %q: arg0namespace with arg0 or arg0path", s)
	}
	return r, nil
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// set validates and stores one key's value.
func (r *Rule) set(key, v string) error {
	check := func(ok bool, what string) error {
		if !ok {
			return fmt.Errorf("%s %q is not a valid %s", key, v, what)
		}
		return nil
	}
	switch key {
	case "type":
		t, ok := ruleTypes[v]
		r.Type = t
		return check(ok, "message type")
	case "sender":
		r.Sender = v
		return check(ValidBusName(v), "bus name")
	case "interface":
		r.Interface = v
		return check(ValidInterface(v), "interface name")
	case "member":
		r.Member = v
		return check(ValidMember(v), "member name")
	case "path":
		r.Path = v
		return check(ValidObjectPath(v), "object path")
	case "path_namespace":
		r.PathNamespace = v
		return check(ValidObjectPath(v), "object path")
	case "destination":
		r.Destination = v
		return check(ValidBusName(v), "bus name")
	case "arg0namespace":
		r.Arg0Namespace = v
		return check(validNamespace(v), "name namespace")
	case "eavesdrop":
		r.Eavesdrop = v == "true"
		return check(v == "true" || v == "false", "boolean ('true' or 'false')")
	}
	if num, ok := strings.CutPrefix(key, "arg"); ok {
		num, path := strings.CutSuffix(num, "path")
		n, err := strconv.Atoi(num)
		if err != nil || len(num) > 2 || num[0] == '+' || num[0] == '-' || n >= maxArgs {
			return fmt.Errorf("%s: argument index %q is not 0 to 63", key, num)
		}
		_, dup := r.Args[n]
		if _, p := r.ArgPaths[n]; p || dup {
			return fmt.Errorf("argument %d tested twice", n)
		}
		if path {
			if r.ArgPaths == nil {
				r.ArgPaths = map[int]string{}
			}
			r.ArgPaths[n] = v
		} else {
			if r.Args == nil {
				r.Args = map[int]string{}
			}
			r.Args[n] = v
		}
		return nil
	}
	return fmt.Errorf("unknown key %q", key)
}

// String returns the rule in canonical form: keys in a fixed order,
// indexes ascending, every value quoted. ParseRule(r.String()) equals r
// (if the quoting did not take the text over ParseRule's 1024-byte limit).
func (r *Rule) String() string {
	var b strings.Builder
	add := func(key, v string) {
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(key)
		b.WriteString("='")
		b.WriteString(strings.ReplaceAll(v, "'", `'\''`))
		b.WriteByte('\'')
	}
	if int(r.Type) < len(ruleTypeNames) && ruleTypeNames[r.Type] != "" {
		add("type", ruleTypeNames[r.Type])
	}
	for _, kv := range [...][2]string{{"sender", r.Sender}, {"interface", r.Interface}, {"member", r.Member},
		{"path", r.Path}, {"path_namespace", r.PathNamespace}, {"destination", r.Destination}} {
		if kv[1] != "" {
			add(kv[0], kv[1])
		}
	}
	for _, n := range sortedKeys(r.Args) {
		add("arg"+strconv.Itoa(n), r.Args[n])
	}
	for _, n := range sortedKeys(r.ArgPaths) {
		add("arg"+strconv.Itoa(n)+"path", r.ArgPaths[n])
	}
	if r.Arg0Namespace != "" {
		add("arg0namespace", r.Arg0Namespace)
	}
	if r.Eavesdrop {
		add("eavesdrop", "true")
	}
	return b.String()
}

func sortedKeys(m map[int]string) []int {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	return keys
}

// Match reports whether a message matches the rule; senderNames are the
// sender's unique name and the well-known names it owns (the bus driver's
// "org.freedesktop.DBus" for its own messages); args are the message's
// string arguments from StringArgs (with max 64). Eavesdrop is the
// caller's business: Match only compares.
func (r *Rule) Match(h *Header, senderNames []string, args []Arg) bool {
	if r.Type != 0 && h.Type != r.Type {
		return false
	}
	if r.Interface != "" && h.Interface != r.Interface ||
		r.Member != "" && h.Member != r.Member ||
		r.Path != "" && h.Path != r.Path ||
		r.Destination != "" && h.Destination != r.Destination {
		return false
	}
	if ns := r.PathNamespace; ns != "" {
		if h.Path == "" || ns != "/" && h.Path != ns && !(strings.HasPrefix(h.Path, ns) && h.Path[len(ns)] == '/') {
			return false
		}
	}
	if r.Sender != "" {
		found := false
		for _, n := range senderNames {
			if n == r.Sender {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	for n, v := range r.Args {
		a, ok := argAt(args, n)
		if !ok || a.Kind != 's' || a.Value != v {
			return false
		}
	}
	for n, v := range r.ArgPaths {
		a, ok := argAt(args, n)
		if !ok || !pathMatch(a.Value, v) {
			return false
		}
	}
	if ns := r.Arg0Namespace; ns != "" {
		a, ok := argAt(args, 0)
		if !ok || a.Kind != 's' || a.Value != ns && !(strings.HasPrefix(a.Value, ns) && a.Value[len(ns)] == '.') {
			return false
		}
	}
	return true
}

func argAt(args []Arg, n int) (Arg, bool) {
	for _, a := range args {
		if a.Index == n {
			return a, true
		}
		if a.Index > n {
			break
		}
	}
	return Arg{}, false
}

// pathMatch is argNpath's test: equal, or one ends in '/' and is a prefix
// of the other.
func pathMatch(arg, rule string) bool {
	return arg == rule ||
		strings.HasSuffix(rule, "/") && strings.HasPrefix(arg, rule) ||
		strings.HasSuffix(arg, "/") && strings.HasPrefix(rule, arg)
}
