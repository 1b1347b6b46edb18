package creator

import (
	"fmt"
	"net/netip"
	"os/exec"
	"testing"

	"github.com/porter-ipc/porter/internal/lockdown"
	"github.com/porter-ipc/porter/internal/testutil"
)

// TestLockedDown: the creator started as porter up starts it as root (as
// nobody, lockdown.CreatorProcAttr) or with --creator-as-root (as root)
// ends, on every thread, with no new privileges, a seccomp filter, and
// CAP_NET_BIND_SERVICE alone in its bounding, permitted and effective
// sets; and it still binds port 53, TCP and UDP, IPv4 and IPv6.
func TestLockedDown(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CheckLeaks(t)
	requirePrivilegedPort53(t)
	uid, gid := testutil.Nobody(t)
	for _, asRoot := range []bool{false, true} {
		t.Run(fmt.Sprintf("as-root=%v", asRoot), func(t *testing.T) {
			cmd := exec.Command(creatorPath)
			if !asRoot {
				cmd.SysProcAttr = lockdown.CreatorProcAttr(uid, gid)
			}
			c, err := StartCmd(cmd)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := c.Close(); err != nil {
					t.Errorf("creator exit: %v", err)
				}
			}()
			// The lockdown is done before the first answer.
			f, err := c.Create(UDP, netip.MustParseAddrPort("127.0.0.1:0"))
			if err != nil {
				t.Fatal(err)
			}
			f.Close()
			for field, want := range map[string]string{
				"NoNewPrivs": "1",
				"Seccomp":    "2",
				"CapBnd":     "0000000000000400",
				"CapPrm":     "0000000000000400",
				"CapEff":     "0000000000000400",
				"CapAmb":     "0000000000000000",
			} {
				if got := testutil.ThreadStatus(t, c.Pid(), field); len(got) != 1 || got[0] != want {
					t.Errorf("%s on the creator's threads: %q, want %s on every one", field, got, want)
				}
			}
			for _, a := range loopbacks {
				for _, p := range []Proto{TCP, UDP} {
					ap := netip.AddrPortFrom(a, 53)
					f, err := c.Create(p, ap)
					if err != nil {
						t.Fatalf("%s %s: %v", p, ap, err)
					}
					checkSocket(t, f, p, ap)
					f.Close()
				}
			}
			noCreatorSockets(t, c)
		})
	}
}
