package broker

import (
	"fmt"
)

type usage struct{ refs, pending, conns int }

func (s *Server) use(uid int) *usage {
	u := s.usage[uid]
	if u == nil {
		u = &usage{}
		s.usage[uid] = u
	}
	return u
}

func (s *Server) unuse(uid int) {
	if u := s.usage[uid]; u != nil && *u == (usage{}) {
		delete(s.usage, uid)
	}
}

// quotaLocked checks uid's quotas for one more reference (and pending token).
func (s *Server) quotaLocked(uid int, pending bool) (Code, string) {
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
