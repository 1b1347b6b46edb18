package broker

import (
	"fmt"
)

// usage is what one uid has in the broker: references (held and
// pending), pending tokens, open connections. The quotas bound each.
type usage struct{ refs, pending, conns int }

// usageOf returns uid's usage, making a zero one if it has none. s.mu is
// held.
func (s *Server) usageOf(uid int) *usage {
	u := s.usage[uid]
	if u == nil {
		u = &usage{}
		s.usage[uid] = u
	}
	return u
}

// forgetIfIdle deletes uid's usage once every count in it is zero, so
// that the map holds only uids that have something. It changes no count.
// s.mu is held.
func (s *Server) forgetIfIdle(uid int) {
	if u := s.usage[uid]; u != nil && *u == (usage{}) {
		delete(s.usage, uid)
	}
}

// overQuotaLocked says which quota, if any, one more reference of uid's
// (and one more pending token, when pending) would exceed: CodeQuota and
// why, or 0. s.mu is held.
func (s *Server) overQuotaLocked(uid int, pending bool) (Code, string) {
	u := s.usage[uid]
	if u == nil {
		return 0, ""
	}
	if s.cfg.MaxSocketsPerUID > 0 && u.refs >= s.cfg.MaxSocketsPerUID {
		return CodeQuota, fmt.Sprintf("uid %d already holds %d socket references (quota %d)", uid, u.refs, s.cfg.MaxSocketsPerUID)
	}
	if pending && s.cfg.MaxTokensPerUID > 0 && u.pending >= s.cfg.MaxTokensPerUID {
		return CodeQuota, fmt.Sprintf("uid %d already has %d tokens waiting for pickup (quota %d)", uid, u.pending, s.cfg.MaxTokensPerUID)
	}
	return 0, ""
}
