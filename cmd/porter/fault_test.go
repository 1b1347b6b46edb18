package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/porter-ipc/porter/broker"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// The fault test's knobs: how many clients (default faultClients) and the
// seed of their plans (default faultSeed; the test logs the one it used).
const (
	faultClientsEnv = "PORTER_FAULT_CLIENTS"
	faultSeedEnv    = "PORTER_FAULT_SEED"
	faultPlanEnv    = "PORTER_FAULT_PLAN"
	faultChild      = "fault-client"
	faultClients    = 200
	faultSeed       = 8
	faultParallel   = 8
	faultMaxConns   = 64
)

func init() { testutil.RegisterChild(faultChild, childFaultClient) }

// TestFaultKilledClients runs many real client processes against a real
// porter up (and its real creator), each following a random plan of
// broker requests (REQUEST, DEFER, PICKUP from a second connection, LIST,
// RELEASE, RELEASE-FD, and requests sent raw whose answer it never reads),
// in lock step with the test, which SIGKILLs it after a random step. Half
// run as root, half as nobody. Afterwards, waiting for each condition:
// porter ls lists nothing (pending tokens of dead clients expire), the
// broker's fd count is back at its baseline, every port a client had is
// bindable again, the creator still creates, and the per-uid connection
// quota counts no dead connection.
//
// PORTER_FAULT_CLIENTS (default 200) and PORTER_FAULT_SEED (default 8)
// change the run; a failure names the seed and the client's plan.
func TestFaultKilledClients(t *testing.T) {
	testutil.CheckLeaks(t)
	n := envInt(t, faultClientsEnv, faultClients)
	seed := uint64(envInt(t, faultSeedEnv, faultSeed))
	t.Logf("%d clients, seed %d (%s=%d %s=%d to repeat)", n, seed, faultClientsEnv, n, faultSeedEnv, seed)

	const ttl = 3 * time.Second
	d := up(t, "", "--token-ttl", ttl.String(), "--max-tokens", "-1", "--max-conns", strconv.Itoa(faultMaxConns))
	pid := d.cmd.Process.Pid

	// Warm the broker up (a first connection and a first socket), then
	// take its fd count with nothing cached as the baseline.
	warm, err := broker.Dial(d.sock)
	if err != nil {
		t.Fatal(err)
	}
	g, err := warm.Request(broker.Request{Proto: broker.TCP, Addr: netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	g.File.Close()
	warm.Close()
	waitLong(t, 30*time.Second, "the warm-up socket to leave the cache", func() bool { return len(d.ls(t).Sockets) == 0 })
	base := procFDs(t, pid)
	t.Logf("broker fds at baseline: %d", len(base))

	// Ports every client shares (share mode any, one application), on
	// both loopback addresses, TCP and UDP; clients also ask for port 0.
	var pool []netip.AddrPort
	for range 3 {
		p := uint16(freePort(t))
		pool = append(pool, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p), netip.AddrPortFrom(netip.IPv6Loopback(), p))
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	plans := make([]faultPlan, n)
	for i := range plans {
		plans[i] = newFaultPlan(rng, pool, i%2 == 1)
	}

	uid, gid := testutil.Nobody(t)
	bin := testutil.WorldExecutable(t)
	var (
		mu     sync.Mutex
		used   = map[string]bool{} // "T 127.0.0.1:80"
		steps  = map[string]int{}  // op kind -> times done
		killed = map[string]int{}  // op kind last done -> kills there
		busy   int                 // EADDRINUSE answers clients waited through
	)
	for _, a := range pool {
		used[string(broker.TCP)+" "+a.String()] = true
		used[string(broker.UDP)+" "+a.String()] = true
	}
	work := make(chan int)
	var wg sync.WaitGroup
	for range faultParallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				p := plans[i]
				u, g := -1, -1
				if p.nobody {
					u, g = uid, gid
				}
				res, err := runFaultClient(bin, d.sock, p, u, g)
				mu.Lock()
				for _, port := range res.ports {
					used[port] = true
				}
				for _, k := range res.done {
					steps[k]++
				}
				killed[res.last]++
				busy += res.busy
				mu.Unlock()
				if err != nil {
					t.Errorf("client %d (seed %d, nobody=%v, kill after step %d, plan %q): %v", i, seed, p.nobody, p.kill, p.ops, err)
				}
			}
		}()
	}
	for i := range plans {
		work <- i
	}
	close(work)
	wg.Wait()
	t.Logf("steps done: %v", steps)
	t.Logf("killed after: %v", killed)
	t.Logf("EADDRINUSE answers waited through (an address whose killed holder's copy was not yet closed): %d", busy)
	if t.Failed() {
		return
	}
	if steps["pickup"] == 0 || steps["release"] == 0 || steps["releasefd"] == 0 {
		t.Errorf("the plans did not exercise every step: %v", steps)
	}

	// Pending tokens of killed clients expire after the TTL; everything
	// else goes when the broker sees the connections close.
	waitLong(t, ttl+60*time.Second, "porter ls to list no socket", func() bool { return len(d.ls(t).Sockets) == 0 })
	// Back to the baseline: no fd the broker has now is new (one that
	// was open for a moment at the baseline, like a connection of
	// porter ls not yet closed, may be gone).
	var extra []string
	waitLong(t, 60*time.Second, "the broker's fds to return to the baseline", func() bool {
		extra = extra[:0]
		for fd, target := range procFDs(t, pid) {
			if base[fd] != target {
				extra = append(extra, fmt.Sprintf("%s -> %s", fd, target))
			}
		}
		return len(extra) == 0
	}, func() string {
		n := len(extra)
		sort.Strings(extra)
		if n > 20 {
			extra = append(extra[:20], "…")
		}
		return fmt.Sprintf("(%d new fds: %v)", n, extra)
	})
	var addrs []string
	for k := range used {
		addrs = append(addrs, k)
	}
	sort.Strings(addrs)
	for _, k := range addrs {
		waitLong(t, 30*time.Second, k+" to be bindable", func() bool { return bindable(k) == nil })
	}
	t.Logf("%d addresses used, all bindable again; broker fds %d (baseline %d)", len(addrs), len(procFDs(t, pid)), len(base))

	// The creator survived: a new socket can still be made.
	c, err := broker.Dial(d.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if g, err := c.Request(broker.Request{Proto: broker.UDP, Addr: netip.MustParseAddrPort("[::1]:0")}); err != nil {
		t.Fatalf("a new socket after the faults: %v", err)
	} else {
		g.File.Close()
	}
	// No connection of a dead client still counts against root's quota:
	// root may open exactly faultMaxConns connections. (The broker closes
	// a connection's fd a moment before it stops counting it: wait.)
	conns := []*broker.Client{c}
	defer func() {
		for _, c := range conns[1:] {
			c.Close()
		}
	}()
	for len(conns) < faultMaxConns {
		var last error
		waitLong(t, 30*time.Second, fmt.Sprintf("connection %d of root's quota of %d", len(conns)+1, faultMaxConns), func() bool {
			c, err := broker.Dial(d.sock)
			if err == nil {
				if _, err = c.List(); err == nil {
					conns = append(conns, c)
					return true
				}
				c.Close()
			}
			last = err
			return false
		}, func() string { return fmt.Sprint(last) })
	}
	over, err := broker.Dial(d.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	var be *broker.Error
	if _, err := over.List(); !errors.As(err, &be) || be.Code != broker.CodeQuota {
		t.Fatalf("connection %d of root's quota of %d: %v, want QUOTA", faultMaxConns+1, faultMaxConns, err)
	}
}

// faultPlan is what one client does: ops in order, killed after step
// kill (0 is right after it connected, i after ops[i-1]).
type faultPlan struct {
	ops    []string
	kill   int
	nobody bool
}

// newFaultPlan draws a plan whose every op is valid where it stands
// (releases only what is held, pickups only pending tokens); a plan may
// end with a request sent raw whose answer is never read.
func newFaultPlan(rng *rand.Rand, pool []netip.AddrPort, nobody bool) faultPlan {
	var p faultPlan
	p.nobody = nobody
	held, pending := 0, 0
	addr := func() string {
		proto := "T"
		if rng.IntN(2) == 0 {
			proto = "U"
		}
		a := pool[rng.IntN(len(pool))]
		if rng.IntN(5) == 0 {
			a = netip.AddrPortFrom(a.Addr(), 0)
		}
		return proto + " " + a.String()
	}
	for range 1 + rng.IntN(8) {
		var ops []string
		ops = append(ops, "req", "req", "defer", "list")
		if held > 0 {
			ops = append(ops, "release", "releasefd")
		}
		if pending > 0 {
			ops = append(ops, "pickup", "pickup")
		}
		switch op := ops[rng.IntN(len(ops))]; op {
		case "req":
			p.ops = append(p.ops, "req "+addr())
			held++
		case "defer":
			p.ops = append(p.ops, "defer "+addr())
			pending++
		case "pickup":
			p.ops = append(p.ops, op)
			pending--
			held++
		case "release", "releasefd":
			p.ops = append(p.ops, op)
			held--
		default:
			p.ops = append(p.ops, op)
		}
	}
	switch rng.IntN(5) {
	case 0:
		p.ops = append(p.ops, "rawreq "+addr())
	case 1:
		p.ops = append(p.ops, "rawdefer "+addr())
	case 2:
		if pending > 0 {
			p.ops = append(p.ops, "rawpickup")
		} else {
			p.ops = append(p.ops, "rawlist")
		}
	}
	p.kill = rng.IntN(len(p.ops) + 1)
	return p
}

// faultResult is what the test learned from one client.
type faultResult struct {
	ports []string // "T 127.0.0.1:80" for every grant it saw
	done  []string // the kinds of the ops it finished
	last  string   // the kind of the op it was killed after ("dial" for none)
	busy  int      // EADDRINUSE answers it waited through (see childFaultClient)
}

// runFaultClient runs one client with plan p, stepping it through its
// plan and killing it with SIGKILL after step p.kill. A client that is
// still running a step after a minute has hung: that is an error.
func runFaultClient(bin, sock string, p faultPlan, uid, gid int) (res faultResult, err error) {
	res.last = "dial"
	cmd := testutil.ChildOf(bin, faultChild, uid, gid)
	cmd.Env = append(cmd.Env, "PORTER_SOCKET="+sock, faultPlanEnv+"="+strings.Join(p.ops, ";"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return res, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return res, err
	}
	if err := cmd.Start(); err != nil {
		return res, err
	}
	var hung bool
	var hungMu sync.Mutex
	timer := time.AfterFunc(time.Minute, func() {
		hungMu.Lock()
		hung = true
		hungMu.Unlock()
		cmd.Process.Kill()
	})
	defer timer.Stop()
	sc := bufio.NewScanner(out)
	killedAt := -1
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "ok" {
			err = fmt.Errorf("client said %q", sc.Text())
			break
		}
		step, _ := strconv.Atoi(f[1])
		if step > 0 {
			res.last = strings.Fields(p.ops[step-1])[0]
			res.done = append(res.done, res.last)
		}
		if len(f) >= 5 && f[2] == "port" {
			res.ports = append(res.ports, f[3]+" "+f[4])
		}
		if len(f) == 7 && f[5] == "busy" {
			n, _ := strconv.Atoi(f[6])
			res.busy += n
		}
		if step == p.kill {
			cmd.Process.Signal(syscall.SIGKILL)
			killedAt = step
			break
		}
		if _, werr := in.Write([]byte{'\n'}); werr != nil {
			err = fmt.Errorf("step %d: %v", step, werr)
			break
		}
	}
	if err == nil && killedAt < 0 {
		err = fmt.Errorf("client stopped before step %d: %v", p.kill, sc.Err())
	}
	if err != nil {
		cmd.Process.Kill()
	}
	io.Copy(io.Discard, out)
	in.Close()
	werr := cmd.Wait()
	hungMu.Lock()
	defer hungMu.Unlock()
	if hung {
		return res, fmt.Errorf("client hung after step %d (%s); stderr:\n%s", len(res.done), res.last, stderr.String())
	}
	if err != nil {
		return res, fmt.Errorf("%v (%v); stderr:\n%s", err, werr, stderr.String())
	}
	var ee *exec.ExitError
	if !errors.As(werr, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		return res, fmt.Errorf("client ended with %v, want SIGKILL; stderr:\n%s", werr, stderr.String())
	}
	return res, nil
}

// childFaultClient follows the plan in $PORTER_FAULT_PLAN, printing
// "ok STEP" after connecting (step 0) and after each op (with
// "port PROTO ADDR" when it got a grant), then waiting for a line on
// stdin before going on. It never ends by itself: the test kills it.
func childFaultClient() int {
	in := bufio.NewReader(os.Stdin)
	next := func(step int, extra string) {
		fmt.Printf("ok %d%s\n", step, extra)
		if _, err := in.ReadString('\n'); err != nil {
			os.Exit(3) // the test has gone
		}
	}
	fail := func(step int, op string, err error) int {
		fmt.Printf("error at step %d (%s): %v\n", step, op, err)
		return 1
	}
	type ref struct {
		c *broker.Client
		g *broker.Grant
	}
	var (
		c1, c2  *broker.Client
		held    []ref
		pending []broker.Token
	)
	c1, err := broker.Dial("")
	if err != nil {
		return fail(0, "dial", err)
	}
	next(0, "")
	portOf := func(g *broker.Grant) string { return fmt.Sprintf(" port %s %s", string(g.Proto), g.Addr) }
	// request asks c1 for req. When the last holder of an address was
	// killed a moment ago, the broker has dropped its reference and its
	// copy (the killed client's connection closed), but the kernel may
	// not yet have closed the killed client's own copy or a GRANT still
	// in flight to it: a new socket for the address then gets
	// EADDRINUSE for that moment (docs/broker.md: the port is free again
	// once the last holder's copy is closed too). It waits for that;
	// a copy that stays (a leak) fails it after 30 seconds.
	request := func(req broker.Request) (*broker.Grant, string, error) {
		deadline := time.Now().Add(30 * time.Second)
		for busy := 0; ; busy++ {
			g, err := c1.Request(req)
			if err == nil || !errors.Is(err, broker.ErrCreate) || !errors.Is(err, unix.EADDRINUSE) || time.Now().After(deadline) {
				extra := ""
				if busy > 0 {
					extra = fmt.Sprintf(" busy %d", busy)
				}
				return g, extra, err
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for i, op := range strings.Split(os.Getenv(faultPlanEnv), ";") {
		step := i + 1
		f := strings.Fields(op)
		var req broker.Request
		if len(f) == 3 {
			req = broker.Request{Proto: broker.Proto(f[1][0]), Addr: netip.MustParseAddrPort(f[2]), Share: broker.ShareAny, App: "fault"}
		}
		extra := ""
		switch f[0] {
		case "req":
			g, busy, err := request(req)
			if err != nil {
				return fail(step, op, err)
			}
			held = append(held, ref{c1, g})
			extra = portOf(g) + busy
		case "defer":
			req.Defer = true
			g, busy, err := request(req)
			if err != nil {
				return fail(step, op, err)
			}
			pending = append(pending, g.Token)
			extra = portOf(g) + busy
		case "pickup":
			// From a second connection: a deferred token is a bearer
			// capability, and the supervisor/child flow uses two.
			if c2 == nil {
				if c2, err = broker.Dial(""); err != nil {
					return fail(step, op, err)
				}
			}
			tok := pending[len(pending)-1]
			pending = pending[:len(pending)-1]
			g, err := c2.Pickup(tok)
			var be *broker.Error
			if errors.As(err, &be) && be.Code == broker.CodeNoToken {
				extra = " expired" // the test took longer than the TTL
				break
			}
			if err != nil {
				return fail(step, op, err)
			}
			held = append(held, ref{c2, g})
			extra = portOf(g)
		case "list":
			if _, err := c1.List(); err != nil {
				return fail(step, op, err)
			}
		case "release", "releasefd":
			if len(held) == 0 {
				break // the pickup it would release had expired
			}
			r := held[len(held)-1]
			held = held[:len(held)-1]
			if f[0] == "release" {
				err = r.c.Release(r.g.Token)
			} else {
				var tok broker.Token
				tok, err = r.c.ReleaseFile(r.g.File)
				if err == nil && tok != r.g.Token {
					// The connection holds more than one reference to
					// this socket, and the broker released another of
					// them: that one's file now stands for r's token.
					err = fmt.Errorf("released token %x, which this connection does not hold to %s", tok, r.g.Addr)
					for j := range held {
						if h := held[j]; h.c == r.c && h.g.Token == tok && h.g.Proto == r.g.Proto && h.g.Addr == r.g.Addr {
							held[j].g.Token, err = r.g.Token, nil
							break
						}
					}
				}
			}
			r.g.File.Close()
			if err != nil {
				return fail(step, op, err)
			}
		case "rawreq", "rawdefer", "rawpickup", "rawlist":
			// Sent, never read: the answer (a GRANT with its fd, or a
			// LIST's messages) is still in flight when the test kills us.
			var b []byte
			switch f[0] {
			case "rawreq", "rawdefer":
				b = rawRequest(req, f[0] == "rawdefer")
			case "rawpickup":
				b = append([]byte{1, 'P', 0, 0}, pending[len(pending)-1][:]...)
			default:
				b = []byte{1, 'L', 0, 0}
			}
			if err := rawSend(c1, b); err != nil {
				return fail(step, op, err)
			}
		default:
			return fail(step, op, errors.New("unknown op"))
		}
		next(step, extra)
	}
	return 4 // the test let the last step go on: it should have killed us
}

// rawRequest encodes a REQUEST as docs/protocol-broker.md describes it.
func rawRequest(r broker.Request, deferred bool) []byte {
	a := r.Addr.Addr()
	fam, ab := byte(4), a.AsSlice()
	if a.Is6() {
		fam = 6
	}
	var flags byte
	if deferred {
		flags = 1
	}
	b := []byte{1, 'Q', 0, 0, byte(r.Proto), fam, byte(r.Share), flags}
	b = binary.BigEndian.AppendUint16(b, r.Addr.Port())
	b = append(b, ab...)
	b = append(b, byte(len(r.App)))
	return append(b, r.App...)
}

// rawSend writes one packet on c's connection, past the Client.
func rawSend(c *broker.Client, b []byte) error {
	f, err := c.File()
	if err != nil {
		return err
	}
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var werr error
	if err := rc.Write(func(fd uintptr) bool {
		_, werr = unix.Write(int(fd), b)
		return werr != unix.EAGAIN
	}); err != nil {
		return err
	}
	return werr
}

// bindable binds "PROTO ADDR" (as used in faultResult.ports) and closes
// it again at once.
func bindable(k string) error {
	proto, addr, _ := strings.Cut(k, " ")
	if proto == string(broker.TCP) {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		return l.Close()
	}
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// procFDs returns the fds process pid has open, each with what it
// points to.
func procFDs(t testing.TB, pid int) map[string]string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]string, len(ents))
	for _, e := range ents {
		if l, err := os.Readlink(dir + "/" + e.Name()); err == nil {
			m[e.Name()] = l
		}
	}
	return m
}

// waitLong is testutil.WaitFor with a bound of its own, for conditions
// that take a known time first (a token's TTL) or much work. The
// optional detail says what was last seen when it gives up.
func waitLong(t testing.TB, bound time.Duration, what string, cond func() bool, detail ...func() string) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			var d []string
			for _, f := range detail {
				d = append(d, f())
			}
			t.Fatalf("still waiting after %v for %s %s", bound, what, strings.Join(d, "; "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// envInt returns the integer in $name, or def when it is unset.
func envInt(t testing.TB, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		t.Fatalf("$%s=%q: want a number >= 0", name, v)
	}
	return n
}
