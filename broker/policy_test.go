package broker

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/porter-ipc/porter/fdpass"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// TestPolicy: an embedder's Policy decides instead of the rules (here ones
// that deny everything). It allows this process by pid and refuses another
// process of the same uid with its own reason, which reaches that client
// as the text of its DENIED error; the creator is not asked then. A
// refusal without a reason says the policy refused.
func TestPolicy(t *testing.T) {
	testutil.CheckLeaks(t)
	var asked atomic.Int32
	made := newCreator(t)
	cr := CreatorFunc(func(p Proto, a netip.AddrPort) (*os.File, error) {
		asked.Add(1)
		return made.Create(p, a)
	})
	denyAll, err := ParseRules(strings.NewReader("deny\n"))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []Request
	me := os.Getpid()
	policy := func(cred fdpass.Cred, r Request) Decision {
		mu.Lock()
		seen = append(seen, r)
		mu.Unlock()
		switch {
		case r.App == "silent":
			return Decision{}
		case cred.PID == me:
			return Decision{Allow: true, Reason: "the test itself"}
		}
		return Decision{Reason: fmt.Sprintf("pid %d is not on the test's list (only pid %d is)", cred.PID, me)}
	}
	h := startServer(t, Config{Creator: cr, Rules: denyAll, Policy: policy})
	port := freePort(t)
	want := Request{Proto: TCP, Addr: loop(port), Share: ShareAny, App: "web"}
	g, err := h.dial().Request(want)
	if err != nil {
		t.Fatalf("the policy allows this pid: %v", err)
	}
	g.File.Close()
	mu.Lock()
	saw := seen
	mu.Unlock()
	if len(saw) != 1 || saw[0] != want {
		t.Fatalf("the policy saw %+v, want the request %+v", saw, want)
	}

	// Another process (another pid, the same uid) asks for the same port.
	cmd := testutil.Child(t, "request", -1, -1)
	cmd.Env = append(cmd.Env, "BROKER="+h.path, fmt.Sprintf("PORT=%d", port))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("request child: %v %s", err, out)
	}
	reason := fmt.Sprintf("pid %d is not on the test's list (only pid %d is)", cmd.Process.Pid, me)
	got := strings.TrimSpace(string(out))
	if !strings.HasPrefix(got, fmt.Sprintf("code %d errno %d:", CodeDenied, unix.EACCES)) || !strings.HasSuffix(got, reason) {
		t.Fatalf("the child got %q, want DENIED (EACCES) ending in %q", got, reason)
	}

	_, err = h.dial().Request(Request{Proto: TCP, Addr: loop(freePort(t)), Share: ShareAny, App: "silent"})
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeDenied || !strings.HasSuffix(e.Text, ": "+deniedText) {
		t.Fatalf("a refusal without a reason: %v, want DENIED saying %q", err, deniedText)
	}
	if n := asked.Load(); n != 1 {
		t.Fatalf("the creator was asked %d times, want once (refusals come first)", n)
	}
}

// childRequest asks the broker at $BROKER for TCP port $PORT on the
// loopback and prints "granted" or "code N errno E: " and the error.
func childRequest() int {
	c := childDial()
	if c == nil {
		return 1
	}
	defer c.Close()
	port, _ := strconv.Atoi(os.Getenv("PORT"))
	g, err := c.Request(Request{Proto: TCP, Addr: loop(uint16(port)), Share: ShareAny, App: "web"})
	var be *Error
	switch {
	case err == nil:
		g.File.Close()
		fmt.Println("granted")
	case errors.As(err, &be):
		fmt.Printf("code %d errno %d: %v\n", be.Code, be.Errno, err)
	default:
		fmt.Println("request:", err)
		return 1
	}
	return 0
}

// TestRulesPolicy: Rules.Policy judges by the peer's uid and gid as Check
// does, and nil Rules are the default policy.
func TestRulesPolicy(t *testing.T) {
	rules, err := ParseRules(strings.NewReader("allow uid=33 port=80\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		rules *Rules
		uid   int
		port  uint16
		want  bool
	}{
		{rules, 33, 80, true}, {rules, 34, 80, false}, {rules, 34, 8080, true},
		{nil, 33, 80, false}, {nil, 33, 8080, true}, {nil, 33, 0, true},
	} {
		r := Request{Proto: TCP, Addr: loop(tc.port)}
		d := tc.rules.Policy()(fdpass.Cred{PID: 1, UID: tc.uid, GID: tc.uid}, r)
		if d != tc.rules.Check(tc.uid, tc.uid, r.Proto, r.Addr) || d.Allow != tc.want || d.Reason == "" {
			t.Errorf("rules %d, uid %d port %d: %+v, want allow=%v with a reason", tc.rules.Len(), tc.uid, tc.port, d, tc.want)
		}
	}
}
