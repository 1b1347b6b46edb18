package bus

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/porter-ipc/porter/fdpass"
	"github.com/porter-ipc/porter/internal/testutil"
)

// next waits for the next Notice on w.
func next(t *testing.T, w *Watcher) *Notice {
	t.Helper()
	select {
	case n, ok := <-w.C:
		if !ok {
			t.Fatal("watcher closed")
		}
		return n
	case <-time.After(20 * time.Second):
		t.Fatal("no notice in 20 s")
	}
	return nil
}

// collision finds an arg0 value other than "red" whose signal (a deep path
// and many arguments: many properties) has a bloom that contains the
// bloom of the match {interface, arg0 = red}: a false positive of the
// filter, which the exact rules must remove.
func collision(rules []Rule) *Message {
	path := "/" + strings.Repeat("d/", 15) + "d"
	match := MatchBloom(DefaultBloom, rules)
	for i := 0; i < 1_000_000; i++ {
		m := &Message{Path: path, Interface: "com.example.I", Member: "Changed"}
		m.Args = append(m.Args, Arg{Index: 0, Kind: ArgString, Value: "c" + strconv.Itoa(i)})
		for j := 1; j < MaxArgs; j++ {
			m.Args = append(m.Args, Arg{Index: uint8(j), Kind: ArgString, Value: fmt.Sprintf("v%d.%d", i, j)})
		}
		sig := Signal{Path: m.Path, Interface: m.Interface, Member: m.Member, Args: m.Args}
		if Contains(SignalBloom(DefaultBloom, sig), match) {
			return m
		}
	}
	return nil
}

func init() {
	testutil.RegisterChild("bus-publish", childPublish)
}

// redRules is the match of the delivery matrix's exact subscriber.
var redRules = []Rule{{Kind: RuleInterface, Value: "com.example.I"}, {Kind: RuleArg, Index: 0, Value: "red"}}

// childPublish joins $PORTER_BUS, prints "ready ADDRESS", and on a line
// on stdin publishes the matrix: a bloom false positive of redRules, red,
// blue and End; then it waits for stdin to close.
func childPublish() int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := DialOptions(ctx, "", Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	defer e.Close()
	fp := collision(redRules)
	if fp == nil {
		fmt.Fprintln(os.Stderr, "child: no bloom false positive in 1,000,000 signals")
		return 1
	}
	fp.Body = []byte("false positive")
	sig := func(arg0 string) *Message {
		return &Message{Path: "/a/b", Interface: "com.example.I", Member: "Changed", Body: []byte(arg0),
			Args: []Arg{{Index: 0, Kind: ArgString, Value: arg0}}}
	}
	fmt.Printf("ready %s 0\n", FormatAddress(e.Address()))
	in := bufio.NewReader(os.Stdin)
	if _, err := in.ReadString('\n'); err != nil {
		return 1
	}
	for _, msg := range []*Message{fp, sig("red"), sig("blue"), {Path: "/a", Interface: "com.example.I", Member: "End"}} {
		if err := e.Publish(ctx, msg); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			return 1
		}
	}
	io.Copy(io.Discard, in)
	return 0
}

// The delivery matrix: an exact match gets its signal, a bloom false
// positive is removed by the exact rules, a non-matching subscriber gets
// nothing; the publisher is another process, whose credentials the
// master vouches for (SENDER_CRED).
func TestMulticastDelivery(t *testing.T) {
	testutil.CheckLeaks(t)
	m := busMaster(t)
	ctx := ctxT(t)
	red := redRules
	if collision(red) == nil {
		t.Fatal("no bloom false positive in 1,000,000 signals")
	}
	sub := dial(t, m, Options{})
	exact, err := sub.Watch(ctx, 0, red...)
	if err != nil {
		t.Fatal(err)
	}
	blue, err := sub.Watch(ctx, 0, Rule{Kind: RuleInterface, Value: "com.example.I"}, Rule{Kind: RuleArg, Index: 0, Value: "blue"})
	if err != nil {
		t.Fatal(err)
	}
	none, err := sub.Watch(ctx, 0, Rule{Kind: RuleInterface, Value: "com.example.Other"})
	if err != nil {
		t.Fatal(err)
	}
	end, err := sub.Watch(ctx, 0, Rule{Kind: RuleMember, Value: "End"})
	if err != nil {
		t.Fatal(err)
	}
	pc := testutil.Child(t, "bus-publish", -1, -1)
	pc.Env = append(pc.Env, "PORTER_BUS="+m.Addr())
	stdin, err := pc.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := pc.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := pc.Start(); err != nil {
		t.Fatal(err)
	}
	child := &child{cmd: pc, stdin: stdin, out: bufio.NewReader(stdout)}
	defer func() {
		stdin.Close()
		if err := pc.Wait(); err != nil {
			t.Errorf("publisher: %v", err)
		}
	}()
	if _, err := fmt.Sscanf(child.line(t), "ready %s", &child.addr); err != nil {
		t.Fatal(err)
	}
	pubAddr := mustAddr(t, child.addr)
	io.WriteString(stdin, "go\n")
	if n := next(t, end); n.Member != "End" || n.Sender != pubAddr {
		t.Fatalf("end marker: %q from %d", n.Member, n.Sender)
	}
	// Delivery is in order on one reader: everything before End is queued.
	if n := next(t, exact); string(n.Body) != "red" || n.Sender != pubAddr || n.Cred.PID != pc.Process.Pid {
		t.Errorf("exact match got %q from %d (cred %+v)", n.Body, n.Sender, n.Cred)
	}
	if n := next(t, blue); string(n.Body) != "blue" {
		t.Errorf("blue got %q", n.Body)
	}
	for name, w := range map[string]*Watcher{"exact": exact, "blue": blue, "none": none} {
		if len(w.C) != 0 {
			n := <-w.C
			t.Errorf("%s got an extra signal %q (arg0 %v)", name, n.Body, n.Args[:1])
		}
	}
	// Bad input is the publisher's error.
	pub := dial(t, m, Options{})
	if err := pub.Publish(ctx, &Message{Path: "/a", Interface: "com.example.I"}); err == nil {
		t.Errorf("no member: %v", err)
	}
	if err := pub.Publish(ctx, nil); CodeOf(err) != CodeInvalid {
		t.Errorf("nil: %v", err)
	}
	pub.Close()
	if err := pub.Publish(ctx, &Message{Path: "/a", Interface: "com.example.I", Member: "M"}); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
}

// A watcher of one name's changes sees that name's NameOwnerChanged when
// its owner, another process, dies, and nothing for other names.
func TestMulticastNameWatchers(t *testing.T) {
	testutil.CheckLeaks(t)
	m := busMaster(t)
	ctx := ctxT(t)
	w := dial(t, m, Options{})
	mine, err := w.Watch(ctx, AddrBus, Rule{Kind: RuleMember, Value: MemberNameOwnerChanged}, Rule{Kind: RuleArg, Index: 0, Value: "com.example.mine"})
	if err != nil {
		t.Fatal(err)
	}
	c := startChild(t, m, -1, -1, "com.example.other")
	owner := startChild(t, m, -1, -1, "com.example.mine")
	n := next(t, mine)
	old, nw, err := ParseNameOwnerChanged(n.Body)
	if err != nil || old != 0 || nw != mustAddr(t, owner.addr) || n.Sender != AddrBus {
		t.Fatalf("acquired: old %d new %d (%v), from %d", old, nw, err, n.Sender)
	}
	owner.stdin.Close()
	owner.cmd.Wait()
	n = next(t, mine)
	if old, nw, _ = ParseNameOwnerChanged(n.Body); old != mustAddr(t, owner.addr) || nw != 0 {
		t.Fatalf("after the owner left: old %d new %d", old, nw)
	}
	c.stdin.Close()
	c.cmd.Wait()
	if len(mine.C) != 0 {
		t.Errorf("the watcher of com.example.mine got %d more notices", len(mine.C))
	}
}

// A monitor sees a published signal as a copy (from the publisher, to 0),
// and the policy decides who may monitor.
func TestEndpointMonitor(t *testing.T) {
	testutil.CheckLeaks(t)
	m := busMaster(t)
	ctx := ctxT(t)
	me := dial(t, m, Options{})
	mon, err := me.Monitor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := me.Monitor(ctx); CodeOf(err) != CodeInvalid {
		t.Errorf("second Monitor: %v", err)
	}
	pub := dial(t, m, Options{})
	if err := pub.Publish(ctx, &Message{Path: "/a", Interface: "com.example.I", Member: "Hello", Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case c := <-mon.C:
			if c.Type == TypeSignal && c.Info.From == pub.Address() {
				if c.Info.To != 0 || c.Text(FieldMember) != "Hello" || string(c.Body) != "x" {
					t.Errorf("copy: to %d member %q body %q", c.Info.To, c.Text(FieldMember), c.Body)
				}
				goto gone
			}
		case <-ctx.Done():
			t.Fatal("no copy of the signal")
		}
	}
gone:
	// The bus's own signals are copied too (with serial 0: they have
	// none of their own), and the monitor survives them.
	pub.Close()
	for {
		select {
		case c, ok := <-mon.C:
			if !ok {
				t.Fatal("the monitor ended on a copy of a bus signal")
			}
			if c.Type == TypeSignal && c.Info.From == AddrBus && c.Text(FieldMember) == MemberEndpointGone {
				mon.Close()
				for range mon.C {
				}
				return
			}
		case <-ctx.Done():
			t.Fatal("no copy of EndpointGone")
		}
	}
}

func TestEndpointMonitorDenied(t *testing.T) {
	testutil.CheckLeaks(t)
	m, err := Listen(filepath.Join(t.TempDir(), "bus"), func(c fdpass.Cred, r Request) Decision {
		return Decision{Allow: r.Op != OpMonitor, Reason: "no monitors here"}
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Serve() }()
	defer func() { m.Close(); <-done }()
	e := dial(t, m, Options{})
	if _, err := e.Monitor(ctxT(t)); CodeOf(err) != CodeDenied {
		t.Fatalf("Monitor under a policy that refuses: %v", err)
	}
	// Still an ordinary endpoint.
	if _, err := e.List(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	e.Close()
}
