package bus

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

func init() {
	testutil.RegisterChild("bus-memfd", childMemfd)
}

// memfdHandler: Sum describes the body it got (size, sha256, whether it is
// a read-only mapping of a memfd, as /proc/self/maps shows it); Echo
// returns it; Make returns a body of the size the call's body names,
// built in place with NewPayload.
func memfdHandler(ctx context.Context, c *Call) (*Message, error) {
	switch c.Member {
	case "Sum":
		maps, _ := os.ReadFile("/proc/self/maps")
		mapped := false
		for _, l := range strings.Split(string(maps), "\n") {
			if strings.Contains(l, "memfd:porter-bus-payload") && strings.Contains(l, " r--p ") {
				mapped = true
			}
		}
		return &Message{Body: []byte(fmt.Sprintf("%d %x %v %v", len(c.Body), sha256.Sum256(c.Body), c.mapped != nil, mapped))}, nil
	case "Echo":
		return &Message{Body: c.Body}, nil
	case "Make":
		var n int
		fmt.Sscan(string(c.Body), &n)
		p, err := NewPayload(n)
		if err != nil {
			return nil, err
		}
		fill(p.Bytes())
		return &Message{Payload: p}, nil
	}
	return nil, &CallError{Name: ErrorUnknownMethod, Text: c.Member}
}

// fill writes a pattern that differs page to page.
func fill(b []byte) {
	for i := range b {
		b[i] = byte(i*7 + i>>12)
	}
}

// childMemfd joins $PORTER_BUS with memfdHandler, owns $BUS_NAME, prints
// "ready ADDRESS 1" and serves until stdin closes.
func childMemfd() int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := DialOptions(ctx, "", Options{Handler: memfdHandler, NoMemfd: os.Getenv("BUS_NOMEMFD") != ""})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	defer e.Close()
	v, err := e.RequestName(ctx, os.Getenv("BUS_NAME"), 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	fmt.Printf("ready %s %d\n", FormatAddress(e.Address()), v)
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// startMemfdChild runs childMemfd as nobody owning name.
func startMemfdChild(t *testing.T, m *Master, name string, env ...string) *child {
	t.Helper()
	uid, gid := testutil.Nobody(t)
	return startHelper(t, m, "bus-memfd", uid, gid, name, env...)
}

// checkPool closes the pooled memfds before the leak check runs (cleanups
// run last-registered first: call it after testutil.CheckLeaks).
func checkPool(t *testing.T) {
	t.Cleanup(payloadPool.drain)
}

// TestMemfdCall: 64 MiB through a call to another process, direct and
// routed: the callee gets a read-only mapping of a memfd it checked, not
// a copy; the reply comes back the same way; a body built in place with
// NewPayload goes too; a peer that takes no memfds is refused locally.
func TestMemfdCall(t *testing.T) {
	testutil.RequireRoot(t)
	modes(t, func(t *testing.T, routed bool) {
		testutil.CheckLeaks(t)
		checkPool(t)
		m := busMaster(t)
		e := dial(t, m, Options{Routed: routed})
		startMemfdChild(t, m, "com.example.memfd")
		ctx := ctxT(t)
		body := make([]byte, 64<<20)
		fill(body)
		r, err := e.Call(ctx, "com.example.memfd", &Message{Member: "Sum", Body: body})
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("%d %x true true", len(body), sha256.Sum256(body))
		if string(r.Body) != want {
			t.Fatalf("callee saw %q, want %q", r.Body, want)
		}
		r.Close()
		// The echo comes back as a memfd: Body is our read-only mapping.
		r, err = e.Call(ctx, "com.example.memfd", &Message{Member: "Echo", Body: body})
		if err != nil {
			t.Fatal(err)
		}
		if r.mapped == nil || !bytes.Equal(r.Body, body) {
			t.Fatalf("echo: mapped %v, %d bytes, equal %v", r.mapped != nil, len(r.Body), bytes.Equal(r.Body, body))
		}
		r.Close()
		if r.Body != nil {
			t.Fatal("Close left Body set")
		}
		// Built in place, both ways.
		p, err := NewPayload(len(body))
		if err != nil {
			t.Fatal(err)
		}
		fill(p.Bytes())
		r, err = e.Call(ctx, "com.example.memfd", &Message{Member: "Sum", Payload: p})
		if err != nil || string(r.Body) != want {
			t.Fatalf("payload: %q, %v", r.Body, err)
		}
		r.Close()
		r, err = e.Call(ctx, "com.example.memfd", &Message{Member: "Make", Body: []byte("100000")})
		if err != nil {
			t.Fatal(err)
		}
		if r.mapped == nil || !bytes.Equal(r.Body, body[:100000]) {
			t.Fatalf("Make: mapped %v, %d bytes", r.mapped != nil, len(r.Body))
		}
		r.Close()
		// A peer that takes no memfds: refused before anything is sent.
		startMemfdChild(t, m, "com.example.nomemfd", "BUS_NOMEMFD=1")
		_, err = e.Call(ctx, "com.example.nomemfd", &Message{Member: "Sum", Body: body})
		if CodeOf(err) != CodeFdsRefused {
			t.Fatalf("memfd to a peer that refuses them: %v", err)
		}
		// A small body still goes inline to it.
		r, err = e.Call(ctx, "com.example.nomemfd", &Message{Member: "Sum", Body: body[:100]})
		if err != nil || !strings.HasSuffix(string(r.Body), "false false") {
			t.Fatalf("inline to the peer that refuses memfds: %q, %v", r.Body, err)
		}
		r.Close()
	})
}

// badMemfd makes the memfds a receiver must refuse, each with the size the
// MEMFD field will claim.
func badMemfds(t *testing.T) map[string]struct {
	f    *os.File
	size uint64
} {
	t.Helper()
	out := map[string]struct {
		f    *os.File
		size uint64
	}{}
	mk := func(name string, size int, seals int, claim uint64) {
		f, err := newMemfd(size, false)
		if err != nil {
			t.Fatal(err)
		}
		if seals != 0 {
			if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, seals); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() { f.Close() })
		out[name] = struct {
			f    *os.File
			size uint64
		}{f, claim}
	}
	mk("unsealed", 4096, 0, 4096)
	mk("no WRITE seal", 4096, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL, 4096)
	mk("no SHRINK seal", 4096, unix.F_SEAL_WRITE|unix.F_SEAL_GROW|unix.F_SEAL_SEAL, 4096)
	mk("no GROW seal", 4096, unix.F_SEAL_WRITE|unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL, 4096)
	mk("no SEAL seal", 4096, unix.F_SEAL_WRITE|unix.F_SEAL_SHRINK|unix.F_SEAL_GROW, 4096)
	mk("size differs", 4096, memfdSeals, 8192)
	mk("zero, claims bytes", 0, memfdSeals, 1)
	return out
}

// rawMemfdCall sends a hand-made CALL with a MEMFD field of size and mf
// attached, on e's path to dest, and waits for the answer.
func rawMemfdCall(t *testing.T, e, dest *Endpoint, routed bool, size uint64, mf *os.File) error {
	t.Helper()
	ctx := ctxT(t)
	f := &Frame{Type: TypeCall, Serial: e.serial.Add(1), NFDs: 0,
		Fields: []Field{{FieldMember, []byte("Sum")}, {FieldMemfd, Memfd{Size: size}.Encode()}}}
	e.mu.Lock()
	p := e.peers[dest.Address()]
	e.mu.Unlock()
	if p == nil || p.routed != routed {
		t.Fatalf("no %v path to the peer", map[bool]string{false: "direct", true: "routed"}[routed])
	}
	pc := &pendingCall{ch: make(chan answer, 1), peer: dest.Address()}
	if routed {
		f.Source, f.Destination = e.Address(), dest.Address()
		e.mu.Lock()
		e.calls[f.Serial] = pc
		e.mu.Unlock()
		if err := e.sendCtx(ctx, f, []*os.File{mf}); err != nil {
			t.Fatal(err)
		}
		select {
		case a := <-pc.ch:
			_, err := a.message()
			return err
		case <-ctx.Done():
			t.Fatal("no answer")
		}
	}
	c := p.ch
	f.Source, f.Destination = c.local, c.peer
	c.mu.Lock()
	c.pending[f.Serial] = pc
	c.mu.Unlock()
	if err := c.sendCtx(ctx, f, []*os.File{mf}); err != nil {
		t.Fatal(err)
	}
	_, err := c.wait(ctx, f.Serial, pc)
	return err
}

// TestMemfdRefused: a memfd that is not sealed, lacks one seal, or whose
// size differs from the MEMFD field is BAD_MEMFD, on a channel (the
// receiving endpoint checks) and routed (the master does); every fd of
// the frame is closed and the receiver keeps serving.
func TestMemfdRefused(t *testing.T) {
	modes(t, func(t *testing.T, routed bool) {
		testutil.CheckLeaks(t)
		checkPool(t)
		m := busMaster(t)
		srv := dial(t, m, Options{Handler: memfdHandler})
		cli := dial(t, m, Options{Routed: routed})
		ctx := ctxT(t)
		dest := FormatAddress(srv.Address())
		if _, err := cli.Call(ctx, dest, &Message{Member: "Sum"}); err != nil {
			t.Fatal(err)
		}
		// A pipe is no memfd at all.
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer pr.Close()
		defer pw.Close()
		cases := badMemfds(t)
		cases["a pipe"] = struct {
			f    *os.File
			size uint64
		}{pr, 0}
		for name, c := range cases {
			err := rawMemfdCall(t, cli, srv, routed, c.size, c.f)
			if CodeOf(err) != CodeBadMemfd || !errors.Is(err, syscall.EBADF) {
				t.Errorf("%s: %v, want BAD_MEMFD", name, err)
			}
		}
		// A good one passes the same way, and the callee maps it.
		good, err := bodyMemfd(bytes.Repeat([]byte("x"), 100000))
		if err != nil {
			t.Fatal(err)
		}
		defer good.Close()
		if err := rawMemfdCall(t, cli, srv, routed, 100000, good); err != nil {
			t.Fatalf("a good memfd: %v", err)
		}
		r, err := cli.Call(ctx, dest, &Message{Member: "Sum", Body: []byte("still serving")})
		if err != nil || !strings.HasPrefix(string(r.Body), "13 ") {
			t.Fatalf("after the refusals: %q, %v", r.Body, err)
		}
		r.Close()
		// An endpoint that takes no memfds refuses a good one sent anyway.
		no := dial(t, m, Options{Handler: memfdHandler, NoMemfd: true})
		if _, err := cli.Call(ctx, FormatAddress(no.Address()), &Message{Member: "Sum"}); err != nil {
			t.Fatal(err)
		}
		good2, err := bodyMemfd(bytes.Repeat([]byte("x"), 100000))
		if err != nil {
			t.Fatal(err)
		}
		defer good2.Close()
		if err := rawMemfdCall(t, cli, no, routed, 100000, good2); CodeOf(err) != CodeFdsRefused {
			t.Fatalf("a memfd to an endpoint that takes none: %v", err)
		}
	})
}

// TestMemfdSealed: once sent, a payload memfd cannot shrink, grow or be
// written: the receiver's mapping cannot fault (SIGBUS) under it.
func TestMemfdSealed(t *testing.T) {
	testutil.CheckLeaks(t)
	checkPool(t)
	f, err := bodyMemfd(bytes.Repeat([]byte("y"), 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Ftruncate(int(f.Fd()), 4096); !errors.Is(err, unix.EPERM) {
		t.Errorf("ftruncate down: %v, want EPERM", err)
	}
	if err := unix.Ftruncate(int(f.Fd()), 2<<20); !errors.Is(err, unix.EPERM) {
		t.Errorf("ftruncate up: %v, want EPERM", err)
	}
	if _, err := unix.Pwrite(int(f.Fd()), []byte("z"), 0); !errors.Is(err, unix.EPERM) {
		t.Errorf("pwrite: %v, want EPERM", err)
	}
	if _, err := unix.Mmap(int(f.Fd()), 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); !errors.Is(err, unix.EPERM) {
		t.Errorf("writable shared mmap: %v, want EPERM", err)
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, 0); !errors.Is(err, unix.EPERM) {
		t.Errorf("F_ADD_SEALS after F_SEAL_SEAL: %v, want EPERM", err)
	}
	if text := checkMemfd(f, 1<<20, 256<<20); text != "" {
		t.Errorf("checkMemfd: %s", text)
	}
}

// TestPayloadBadInput: a Payload of no bytes, one beside a Body, one sent
// twice, and a body above max_memfd are refused with a clear code, and
// nothing leaks.
func TestPayloadBadInput(t *testing.T) {
	testutil.CheckLeaks(t)
	checkPool(t)
	if _, err := NewPayload(0); CodeOf(err) != CodeInvalid {
		t.Errorf("NewPayload(0): %v", err)
	}
	m := busMaster(t)
	srv := dial(t, m, Options{Handler: memfdHandler})
	cli := dial(t, m, Options{})
	ctx := ctxT(t)
	dest := FormatAddress(srv.Address())
	p, err := NewPayload(100000)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Call(ctx, dest, &Message{Member: "Sum", Body: []byte("x"), Payload: p}); CodeOf(err) != CodeInvalid {
		t.Errorf("Body and Payload: %v", err)
	}
	if _, err := cli.Call(ctx, dest, &Message{Member: "Sum", Payload: p}); CodeOf(err) != CodeInvalid {
		t.Errorf("a Payload used twice: %v", err)
	}
	cli.welcome.MaxMemfd = 1 << 20
	if _, err := cli.Call(ctx, dest, &Message{Member: "Sum", Body: make([]byte, 1<<20+1)}); CodeOf(err) != CodeTooLarge {
		t.Errorf("above max_memfd: %v", err)
	}
}

// TestMemfdBadReply: a REPLY on a channel whose memfd is not sealed or
// not of its size fails the call with BAD_MEMFD at the caller, which
// checks it itself (no master on a channel), and closes every fd.
func TestMemfdBadReply(t *testing.T) {
	testutil.CheckLeaks(t)
	checkPool(t)
	m := busMaster(t)
	srv := dial(t, m, Options{Handler: memfdHandler})
	cli := dial(t, m, Options{})
	ctx := ctxT(t)
	if _, err := cli.Call(ctx, FormatAddress(srv.Address()), &Message{Member: "Sum"}); err != nil {
		t.Fatal(err)
	}
	cli.mu.Lock()
	c := cli.peers[srv.Address()].ch
	cli.mu.Unlock()
	var sc *channel
	testutil.WaitFor(t, "the callee's end of the channel", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		sc = srv.channels[c.id]
		return sc != nil
	})
	for name, bad := range badMemfds(t) {
		serial := cli.serial.Add(1)
		pc := &pendingCall{ch: make(chan answer, 1), peer: c.peer}
		c.mu.Lock()
		c.pending[serial] = pc
		c.mu.Unlock()
		f := &Frame{Type: TypeReply, Serial: srv.serial.Add(1), ReplySerial: serial, Source: sc.local, Destination: sc.peer,
			Fields: []Field{{FieldMemfd, Memfd{Size: bad.size}.Encode()}}}
		if err := sc.send(f, []*os.File{bad.f}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.wait(ctx, serial, pc); CodeOf(err) != CodeBadMemfd {
			t.Errorf("%s: %v, want BAD_MEMFD", name, err)
		}
	}
}

// TestMemfdReplyRefused: a caller that takes no memfds and asks for a
// large reply gets FDS_REFUSED, direct and routed (where the master
// refuses the REPLY to the callee, and the callee must then answer with
// an ERROR, or the caller would wait for ever).
func TestMemfdReplyRefused(t *testing.T) {
	modes(t, func(t *testing.T, routed bool) {
		testutil.CheckLeaks(t)
		checkPool(t)
		m := busMaster(t)
		srv := dial(t, m, Options{Handler: memfdHandler})
		cli := dial(t, m, Options{Routed: routed, NoMemfd: true})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := cli.Call(ctx, FormatAddress(srv.Address()), &Message{Member: "Make", Body: []byte("100000")})
		if CodeOf(err) != CodeFdsRefused {
			t.Fatalf("a large reply to a caller that takes no memfds: %v", err)
		}
		r, err := cli.Call(ctx, FormatAddress(srv.Address()), &Message{Member: "Echo", Body: []byte("small")})
		if err != nil || string(r.Body) != "small" {
			t.Fatalf("a small reply: %q, %v", r.Body, err)
		}
		r.Close()
	})
}
