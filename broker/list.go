package broker

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
)

// SocketInfo describes one cached socket, as LIST reports it.
type SocketInfo struct {
	Proto   Proto
	Addr    netip.AddrPort
	Refs    int          // references: held plus pending
	Linger  int64        // milliseconds of linger left; 0 when not lingering
	Holders []HolderInfo // one per reference
}

// HolderState says whether a reference is held by a connection or is a
// deferred token waiting to be picked up.
type HolderState byte

// Holder states.
const (
	Held    HolderState = 1
	Pending HolderState = 2
)

// String returns "held" or "pending", as porter ls prints it.
func (s HolderState) String() string {
	switch s {
	case Held:
		return "held"
	case Pending:
		return "pending"
	}
	return fmt.Sprintf("state(%d)", byte(s))
}

// HolderInfo describes one reference to a cached socket.
type HolderInfo struct {
	PID, UID, GID int // the holding (or, when pending, requesting) process
	State         HolderState
	Share         Share
	App           string
	TokenPrefix   [4]byte // the first 4 bytes of the token; never the whole
	Expires       int64   // pending: milliseconds until the token expires
}

// Listing is the answer to LIST.
type Listing struct {
	Sockets     []SocketInfo
	CreatorGone bool // the creator has exited: no new sockets can be made
}

func sortSockets(l []SocketInfo) {
	slices.SortFunc(l, func(a, b SocketInfo) int {
		if c := cmp.Compare(a.Proto, b.Proto); c != 0 {
			return c
		}
		return a.Addr.Compare(b.Addr)
	})
}

func sortHolders(l []HolderInfo) {
	slices.SortFunc(l, func(a, b HolderInfo) int {
		if c := cmp.Compare(a.State, b.State); c != 0 {
			return c
		}
		if c := cmp.Compare(a.PID, b.PID); c != 0 {
			return c
		}
		return slices.Compare(a.TokenPrefix[:], b.TokenPrefix[:])
	})
}

// sendListing streams the cache to c: SOCKET and HOLDER messages, then END.
func (s *Server) sendListing(c *conn) bool {
	l := s.List()
	for i := range l.Sockets {
		si := &l.Sockets[i]
		if !s.send(c, encodeSocket(si, len(si.Holders))) {
			return false
		}
		for j := range si.Holders {
			if !s.send(c, encodeHolder(&si.Holders[j])) {
				return false
			}
		}
	}
	return s.send(c, encodeEnd(len(l.Sockets), l.CreatorGone))
}

// List returns a snapshot of the cache, sorted by protocol and address.
func (s *Server) List() Listing {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	l := Listing{CreatorGone: s.creatorGone, Sockets: make([]SocketInfo, 0, len(s.cache))}
	for _, e := range s.cache {
		si := SocketInfo{Proto: e.key.proto, Addr: e.key.addr, Refs: len(e.refs), Holders: make([]HolderInfo, 0, len(e.refs))}
		if !e.until.IsZero() {
			si.Linger = max(e.until.Sub(now).Milliseconds(), 1)
		}
		for rf := range e.refs {
			h := HolderInfo{PID: rf.pid, UID: rf.uid, GID: rf.gid, State: Held, Share: rf.share, App: rf.app}
			copy(h.TokenPrefix[:], rf.tok[:4])
			if rf.c == nil {
				h.State = Pending
				h.Expires = max(rf.expires.Sub(now).Milliseconds(), 0)
			}
			si.Holders = append(si.Holders, h)
		}
		sortHolders(si.Holders)
		l.Sockets = append(l.Sockets, si)
	}
	sortSockets(l.Sockets)
	return l
}
