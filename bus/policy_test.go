package bus

import (
	"strings"
	"testing"

	"github.com/porter-ipc/porter/fdpass"
)

func TestDefaultPolicy(t *testing.T) {
	p := DefaultPolicy(1000)
	user := fdpass.Cred{PID: 10, UID: 1000, GID: 1000}
	other := fdpass.Cred{PID: 11, UID: 1001, GID: 1001}
	root := fdpass.Cred{PID: 1}
	for _, c := range []struct {
		who  fdpass.Cred
		r    Request
		want bool
	}{
		{other, Request{Op: OpJoin}, true},
		{other, Request{Op: OpOwn, Name: "com.example.A"}, true},
		{other, Request{Op: OpOwn, Name: "porter.Bus"}, false},
		{user, Request{Op: OpTalk, Peer: &Peer{Address: 2, Cred: user}}, true},
		{other, Request{Op: OpTalk, Peer: &Peer{Address: 2, Cred: user}}, false},
		{root, Request{Op: OpTalk, Peer: &Peer{Address: 2, Cred: user}}, true},
		{user, Request{Op: OpTalk, Peer: &Peer{Address: 2, Cred: root}}, false},
		{other, Request{Op: OpMatch}, true},
		{other, Request{Op: OpMonitor}, false},
		{user, Request{Op: OpMonitor}, true},
		{root, Request{Op: OpMonitor}, true},
	} {
		if d := p(c.who, c.r); d.Allow != c.want || (!d.Allow && d.Reason == "") {
			t.Errorf("uid %d %v %q: %+v, want allow=%v with a reason when refused", c.who.UID, c.r.Op, c.r.Name, d, c.want)
		}
	}
}

func TestWithOwnRules(t *testing.T) {
	p := WithOwnRules(DefaultPolicy(0),
		OwnRule{Prefix: "com.example", UIDs: []int{1000}},
		OwnRule{Prefix: "com.example.shared", GIDs: []int{100}},
	)
	own := func(uid, gid int, name string) Decision {
		return p(fdpass.Cred{UID: uid, GID: gid}, Request{Op: OpOwn, Name: name})
	}
	for _, c := range []struct {
		uid, gid int
		name     string
		want     bool
	}{
		{1000, 1000, "com.example", true},
		{1000, 1000, "com.example.A", true},
		{1001, 1001, "com.example.A", false},
		{1001, 1001, "com.examples.A", true}, // not under the prefix: an element, not a string prefix
		{1001, 100, "com.example.shared.X", true},
		{1000, 1000, "com.example.shared.X", false}, // the longest prefix decides
		{0, 0, "com.example.A", true},
		{1001, 1001, "org.other.A", true},
		{1001, 1001, "porter.X", false}, // base still judges
	} {
		d := own(c.uid, c.gid, c.name)
		if d.Allow != c.want {
			t.Errorf("uid %d gid %d owns %s: %+v, want %v", c.uid, c.gid, c.name, d, c.want)
		}
		if !d.Allow && !strings.Contains(d.Reason, c.name) && !strings.Contains(d.Reason, "reserved") {
			t.Errorf("refusal without the name: %q", d.Reason)
		}
	}
}
