package cap_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/porter-ipc/porter/cap"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// Raw frames, written from docs/protocol-cap.md alone.

func rawFrame(typ byte, nfds uint16, id uint64, code uint32, name string, body []byte) []byte {
	b := make([]byte, 24, 24+len(name)+len(body))
	b[0], b[1] = 1, typ
	binary.LittleEndian.PutUint16(b[4:], nfds)
	binary.LittleEndian.PutUint16(b[6:], uint16(len(name)))
	binary.LittleEndian.PutUint64(b[8:], id)
	binary.LittleEndian.PutUint32(b[16:], uint32(len(body)))
	binary.LittleEndian.PutUint32(b[20:], code)
	return append(append(b, name...), body...)
}

// addBody is the value {n: k} for small k.
func addBody(k int64) []byte {
	return binary.AppendUvarint([]byte{0x09, 0x01, 0x01, 'n', 0x03}, uint64(k<<1)^uint64(k>>63))
}

// rawOpen opens a session through door with raw syscalls and returns the
// session socket (blocking) and the cookie.
func rawOpen(door int) (int, uint64, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, 0, err
	}
	err = unix.Sendmsg(door, rawFrame(1, 1, 0, 0, "", nil), unix.UnixRights(fds[1]), nil, 0)
	unix.Close(fds[1])
	if err != nil {
		unix.Close(fds[0])
		return -1, 0, err
	}
	buf := make([]byte, 64)
	n, err := unix.Read(fds[0], buf)
	if err != nil || n != 32 || buf[1] != 2 {
		unix.Close(fds[0])
		return -1, 0, fmt.Errorf("no OPENED: %d bytes, %v", n, err)
	}
	return fds[0], binary.LittleEndian.Uint64(buf[24:]), nil
}

// rawCall sends a CALL and reads its answer: the type, code and body.
func rawCall(s int, id uint64, name string, body []byte) (byte, uint32, []byte, error) {
	if _, err := unix.Write(s, rawFrame(3, 0, id, 0, name, body)); err != nil {
		return 0, 0, nil, err
	}
	buf := make([]byte, 65536)
	n, err := unix.Read(s, buf)
	if err != nil {
		return 0, 0, nil, err
	}
	if n < 24 {
		return 0, 0, nil, fmt.Errorf("answer of %d bytes", n)
	}
	if got := binary.LittleEndian.Uint64(buf[8:]); got != id {
		return 0, 0, nil, fmt.Errorf("answer to id %d, want %d", got, id)
	}
	return buf[1], binary.LittleEndian.Uint32(buf[20:]), buf[24:n], nil
}

// childAttacker holds a door to A only (PORTER_CAP_A, read by hand) and
// knows B's cookie (CAP_B_COOKIE): it writes B's cookie, guesses and
// garbage everywhere a frame has room, and reports A's count as its
// Adds returned it.
func childAttacker() int {
	door, _ := strconv.Atoi(os.Getenv("PORTER_CAP_A"))
	cookieB, _ := strconv.ParseUint(os.Getenv("CAP_B_COOKIE"), 10, 64)
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "attacker:", err); return 1 }
	s, cookieA, err := rawOpen(door)
	if err != nil {
		return fail(err)
	}
	say("cookie %d", cookieA)
	var b8 [8]byte
	binary.LittleEndian.PutUint64(b8[:], cookieB)
	attacks := [][]byte{
		addBody(1),
		// B's cookie as an extra field, as the object's "id", as a uint.
		append(append([]byte{0x09, 0x02, 0x02, 'i', 'd', 0x04}, binary.AppendUvarint(nil, cookieB)...), 0x01, 'n', 0x03, 0x02),
		append([]byte{0x09, 0x02, 0x01, 'n', 0x03, 0x02, 0x06, 'o', 'b', 'j', 'e', 'c', 't', 0x07, 0x08}, b8[:]...),
	}
	last := int64(0)
	for i, body := range attacks {
		// The id is B's cookie, or a guess: ids name calls, not objects.
		for _, id := range []uint64{cookieB, cookieB + 1, uint64(i + 1)} {
			typ, code, ans, err := rawCall(s, id, "Add", body)
			if err != nil {
				return fail(err)
			}
			if typ != 4 || len(ans) < 2 || ans[0] != 0x03 {
				return fail(fmt.Errorf("attack %d: answer type %d code %d %x", i, typ, code, ans))
			}
			u, _ := binary.Uvarint(ans[1:])
			last = int64(u>>1) ^ -int64(u&1)
		}
	}
	// Garbage in the body: BAD_ARGS, from A.
	if typ, code, _, err := rawCall(s, 99, "Add", b8[:]); err != nil || typ != 5 || code != 2 {
		return fail(fmt.Errorf("garbage body: type %d code %d %v", typ, code, err))
	}
	// A CALL written on the door itself is not an OPEN: the server drops
	// it; the door still opens sessions to A, with A's cookie.
	unix.Write(door, rawFrame(3, 0, cookieB, 0, "Add", addBody(1000)))
	unix.Write(door, b8[:])
	s2, c2, err := rawOpen(door)
	if err != nil {
		return fail(err)
	}
	if c2 != cookieA {
		return fail(fmt.Errorf("second session's cookie %d, want A's %d", c2, cookieA))
	}
	if _, _, ans, err := rawCall(s2, cookieB, "Add", addBody(1)); err != nil {
		return fail(err)
	} else {
		u, _ := binary.Uvarint(ans[1:])
		last = int64(u>>1) ^ -int64(u&1)
	}
	// A broken frame ends that session only.
	unix.Write(s2, rawFrame(3, 0, 0, 0, "Add", nil))
	if n, err := unix.Read(s2, b8[:]); n != 0 || err != nil {
		return fail(fmt.Errorf("session after a malformed frame: %d bytes, %v", n, err))
	}
	if _, _, _, err := rawCall(s, 7, "Add", addBody(0)); err != nil {
		return fail(fmt.Errorf("first session after the second broke: %v", err))
	}
	say("a %d", last)
	return 0
}

// TestIntegrityAttack: a hand-written client that holds a door to A and
// writes B's cookie, guessed ids and garbage into its frames reaches A
// every time and B never.
func TestIntegrityAttack(t *testing.T) {
	testutil.CheckLeaks(t)
	srv := newServer(t)
	a, bObj := &Counter{}, &Counter{n: 1000}
	ra, rb := export(t, srv, a), export(t, srv, bObj)
	cb, err := rb.Cookie(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := ra.Cookie(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	ch := startChild(t, "cap-attacker", -1, -1, []string{"CAP_B_COOKIE=" + strconv.FormatUint(cb, 10)}, map[string]*cap.Ref{"A": ra})
	if got := ch.expect("cookie"); got != strconv.FormatUint(ca, 10) {
		t.Fatalf("the attacker's session has cookie %s, A's is %d", got, ca)
	}
	if got := ch.expect("a"); got != "10" {
		t.Fatalf("A's count as the attacker saw it: %s, want 10", got)
	}
	if nb, na := bObj.get(), a.get(); nb != 1000 || na != 10 {
		t.Fatalf("B is %d (want 1000 untouched), A is %d (want 10)", nb, na)
	}
}

// Big returns a result of n bytes.
type Big struct{}

func (Big) Get(ctx context.Context, n int) ([]byte, error) { return make([]byte, n), nil }

// TestClientNeverReads: a client that sends calls and reads none of the
// answers fills its session and no more: the server stops reading it
// (its writes wait), its goroutines stay bounded by MaxCalls, and other
// clients are served meanwhile. Closing the session frees it all.
func TestClientNeverReads(t *testing.T) {
	testutil.CheckLeaks(t)
	srv := newServer(t)
	r := export(t, srv, Big{})
	door, err := r.File()
	if err != nil {
		t.Fatal(err)
	}
	defer door.Close()
	base := runtime.NumGoroutine()
	s, _, err := rawOpen(testutil.FD(t, door))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(s)
	// Send until the kernel refuses: the server has stopped reading.
	sent := 0
	for id := uint64(1); ; id++ {
		err := unix.Sendmsg(s, rawFrame(3, 0, id, 0, "Get", []byte{0x03, 0x80, 0x80, 0x06}), nil, nil, unix.MSG_DONTWAIT)
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		sent++
		if sent > 1_000_000 {
			t.Fatal("the server reads a client that never reads without end")
		}
	}
	g := runtime.NumGoroutine()
	t.Logf("%d calls sent before the session filled; goroutines %d -> %d", sent, base, g)
	if g > base+cap.MaxCalls+8 {
		t.Fatalf("goroutines grew from %d to %d", base, g)
	}
	// Another client is served meanwhile.
	other := mustDup(t, r)
	defer other.Close()
	var out []byte
	if err := r.Call(ctxT(t), "Get", 3, &out); err != nil || len(out) != 3 {
		t.Fatalf("another client: %v", err)
	}
	// Revoking does not wait for the client that does not read.
	revoked := make(chan error, 1)
	go func() { revoked <- srv.Revoke(r) }()
	select {
	case err := <-revoked:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Revoke waits for a client that does not read")
	}
	unix.Close(s)
	testutil.WaitFor(t, "the stuck session's goroutines to end", func() bool { return runtime.NumGoroutine() <= base+2 })
}

// FileSink takes files and closes them; FileSource gives pipes.
type FileSink struct{}

func (FileSink) Take(ctx context.Context, fs []*os.File) (int, error) {
	for _, f := range fs {
		f.Close()
	}
	return len(fs), nil
}

func (FileSink) Files(ctx context.Context, n int) ([]*os.File, error) {
	var fs []*os.File
	for i := 0; i < n; i++ {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		w.Close()
		fs = append(fs, r)
	}
	return fs, nil
}

// lowerNofile sets RLIMIT_NOFILE so that exactly room more fds fit: the
// kernel gives the lowest free numbers, and the limit bounds numbers.
func lowerNofile(room int) error {
	open := testutil.OpenFDs()
	fd := 0
	for free := 0; ; fd++ {
		if _, ok := open[fd]; !ok {
			if free++; free == room {
				break
			}
		}
	}
	return setNofile(uint64(fd + 1))
}

func childFDServer(ctx context.Context) error {
	board := inherit("BOARD")
	defer board.Close()
	srv := cap.NewServer()
	defer srv.Close()
	s, err := srv.Export(FileSink{})
	if err != nil {
		return err
	}
	if err := board.Call(ctx, "Put", PutArgs{Name: "sink", Ref: s}, nil); err != nil {
		return err
	}
	s.Close()
	var first *cap.Ref
	if err := board.Call(ctx, "Get", "go", &first); err != nil {
		return err
	}
	first.Close()
	if err := lowerNofile(3); err != nil {
		return err
	}
	say("ready")
	<-ctx.Done()
	return nil
}

func pipeFiles(t testing.TB, n int) []*os.File {
	var fs []*os.File
	for i := 0; i < n; i++ {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		w.Close()
		t.Cleanup(func() { r.Close() })
		fs = append(fs, r)
	}
	return fs
}

// TestFDExhaustionServer: a call whose fds the server has no room for
// fails with INTERNAL (EMFILE) and no fd is leaked; the server goes on
// serving the same session and others.
func TestFDExhaustionServer(t *testing.T) {
	testutil.CheckLeaks(t)
	_, board, br := serveBoard(t)
	ch := startChild(t, "cap-fdserver", -1, -1, nil, map[string]*cap.Ref{"BOARD": br})
	sink := board.get(t, "sink")
	ctx := ctxT(t)
	var n int
	if err := sink.Call(ctx, "Take", pipeFiles(t, 1), &n); err != nil {
		t.Fatal(err) // the session is open before the limit falls
	}
	board.Put(ctx, PutArgs{Name: "go", Ref: mustDup(t, br)})
	ch.expect("ready")
	before := fdCount(ch.cmd.Process.Pid)
	err := sink.Call(ctx, "Take", pipeFiles(t, 20), &n)
	if !errors.Is(err, cap.ErrInternal) || !strings.Contains(err.Error(), "EMFILE") {
		t.Fatalf("20 fds to a server with room for 3: %v", err)
	}
	if after := fdCount(ch.cmd.Process.Pid); after != before {
		t.Fatalf("server's fds %d -> %d", before, after)
	}
	for _, k := range []int{2, 0, 1} {
		if err := sink.Call(ctx, "Take", pipeFiles(t, k), &n); err != nil || n != k {
			t.Fatalf("then %d fds: %d, %v", k, n, err)
		}
	}
}

func childFDClient(ctx context.Context) error {
	src := inherit("SRC")
	defer src.Close()
	var fs []*os.File
	if err := src.Call(ctx, "Files", 0, &fs); err != nil {
		return err
	}
	if err := lowerNofile(3); err != nil {
		return err
	}
	err := src.Call(ctx, "Files", 20, &fs)
	say("20 %v %v", errors.Is(err, cap.ErrFDLimit), err)
	for _, k := range []int{2, 0, 1} {
		if err := src.Call(ctx, "Files", k, &fs); err != nil || len(fs) != k {
			return fmt.Errorf("then %d: %d, %v", k, len(fs), err)
		}
		for _, f := range fs {
			f.Close()
		}
	}
	say("done")
	return nil
}

// TestFDExhaustionClient: an answer whose fds the client has no room for
// fails that call with FD_LIMIT; the session serves the next calls.
func TestFDExhaustionClient(t *testing.T) {
	testutil.CheckLeaks(t)
	srv := newServer(t)
	src := export(t, srv, FileSink{})
	ch := startChild(t, "cap-fdclient", -1, -1, nil, map[string]*cap.Ref{"SRC": src})
	if got := ch.expect("20"); !strings.HasPrefix(got, "true") {
		t.Fatalf("20 fds into a client with room for 3: %s", got)
	}
	ch.expect("done")
}

func childTooManyRefs(ctx context.Context) error {
	sink := inherit("SINK")
	defer sink.Close()
	var n int
	if err := sink.Call(ctx, "Take", []*os.File{os.Stdin}, &n); err != nil {
		return err
	}
	// Put 100 fds in flight for the user, on a pair nobody reads, then
	// lower the limit under them: whatever other processes of the user
	// do meanwhile, the count is over the limit until these are read.
	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	const stuffed = 100
	for i := 0; i < stuffed; i++ {
		if err := unix.Sendmsg(p[0], []byte{0}, unix.UnixRights(0), nil, unix.MSG_DONTWAIT); err != nil {
			return fmt.Errorf("stuffing: %w", err)
		}
	}
	if err := setNofile(48); err != nil {
		return err
	}
	say("stuffed %d", stuffed)
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err = sink.Call(short, "Take", []*os.File{os.Stdin}, &n)
	cancel()
	say("limited %v %v", errors.Is(err, cap.ErrFDLimit) && errors.Is(err, unix.ETOOMANYREFS), err)
	// Reading them brings the count down: a waiting call goes through.
	done := make(chan error, 1)
	go func() { done <- sink.Call(ctx, "Take", []*os.File{os.Stdin, os.Stdin}, &n) }()
	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(4))
	for i := 0; i < stuffed; i++ {
		_, oobn, _, _, err := unix.Recvmsg(p[1], buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err != nil {
			return err
		}
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for _, m := range msgs {
			fds, _ := unix.ParseUnixRights(&m)
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
	}
	err = <-done
	say("after %v %d", err, n)
	return nil
}

// TestTooManyRefsBackPressure: as an unprivileged user (root is exempt),
// with the user's fds in flight over the sender's RLIMIT_NOFILE, a call
// carrying fds waits and retries: it fails with FD_LIMIT (ETOOMANYREFS)
// only when its deadline passes, and goes through once the fds in
// flight are received.
func TestTooManyRefsBackPressure(t *testing.T) {
	testutil.CheckLeaks(t)
	srv := newServer(t)
	sink := export(t, srv, FileSink{})
	uid, gid := -1, -1
	if os.Geteuid() == 0 {
		uid, gid = testutil.Nobody(t)
	}
	ch := startChild(t, "cap-refs", uid, gid, nil, map[string]*cap.Ref{"SINK": sink})
	ch.expect("stuffed")
	if got := ch.expect("limited"); !strings.HasPrefix(got, "true") {
		t.Fatalf("call while over the limit: %s", got)
	}
	if got := ch.expect("after"); got != "<nil> 2" {
		t.Fatalf("call once the fds were received: %s", got)
	}
}
