package broker

import (
	"fmt"
)

// Share is a request's share mode.
type Share byte

// Share modes, as in BIND10's socket cache.
const (
	ShareNone Share = 0 // shared with nobody
	ShareApp  Share = 1 // shared with requests of the same application name
	ShareAny  Share = 2 // shared with any request that is not ShareNone (ShareApp ones need the same name)
)

// String returns "none", "app" or "any", as ParseShare accepts.
func (s Share) String() string {
	switch s {
	case ShareNone:
		return "none"
	case ShareApp:
		return "app"
	case ShareAny:
		return "any"
	}
	return fmt.Sprintf("share(%d)", byte(s))
}

// ParseShare parses "none", "app" or "any".
func ParseShare(s string) (Share, error) {
	switch s {
	case "none":
		return ShareNone, nil
	case "app":
		return ShareApp, nil
	case "any":
		return ShareAny, nil
	}
	return 0, fmt.Errorf("invalid share mode %q (want none, app or any)", s)
}

// Compatible reports whether a request with share mode a and application
// name appA may share a socket with a holder that has mode b and name appB:
// neither is ShareNone, and where either is ShareApp both names are equal.
// Invalid modes are never compatible.
func Compatible(a Share, appA string, b Share, appB string) bool {
	if a > ShareAny || b > ShareAny || a == ShareNone || b == ShareNone {
		return false
	}
	if a == ShareApp || b == ShareApp {
		return appA == appB
	}
	return true
}
