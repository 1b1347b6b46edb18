package bus

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// TestPayloadWrite builds a body with Write (in odd-sized chunks), WriteAt
// (a patch) and Bytes (the mapping, which shows what was written and whose
// writes the send takes too), sends it, and checks what the callee read;
// then one written through Bytes alone, whose mapping starts as zeros;
// then a body left mostly unwritten, which reads as zeros. Writes past the
// size, at a negative offset, or after the send are refused with
// CodeInvalid and write nothing.
func TestPayloadWrite(t *testing.T) {
	testutil.CheckLeaks(t)
	checkPool(t)
	m := busMaster(t)
	srv := dial(t, m, Options{Handler: memfdHandler})
	cli := dial(t, m, Options{})
	ctx := ctxT(t)
	dest := FormatAddress(srv.Address())
	sum := func(want []byte) string {
		return fmt.Sprintf("%d %x true true", len(want), sha256.Sum256(want))
	}

	const n = 300001
	want := make([]byte, n)
	fill(want)
	p, err := NewPayload(n)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < n; off += 4099 {
		chunk := want[off:min(off+4099, n)]
		if w, err := p.Write(chunk); err != nil || w != len(chunk) {
			t.Fatalf("Write at %d: %d, %v", off, w, err)
		}
	}
	if w, err := p.Write([]byte{1}); CodeOf(err) != CodeInvalid || w != 0 {
		t.Errorf("Write past the end: %d, %v; want 0, INVALID", w, err)
	}
	if w, err := p.WriteAt([]byte{1, 2, 3}, n-2); CodeOf(err) != CodeInvalid || w != 0 {
		t.Errorf("WriteAt across the end: %d, %v; want 0, INVALID", w, err)
	}
	if w, err := p.WriteAt([]byte{1}, -1); CodeOf(err) != CodeInvalid || w != 0 {
		t.Errorf("WriteAt(-1): %d, %v; want 0, INVALID", w, err)
	}
	patch := []byte("patched in the middle")
	if _, err := p.WriteAt(patch, 100000); err != nil {
		t.Fatal(err)
	}
	copy(want[100000:], patch)
	b := p.Bytes()
	if !bytes.Equal(b, want) {
		t.Fatal("the mapping does not show what Write and WriteAt wrote")
	}
	b[n-1] ^= 0xff // through the mapping: sent too
	want[n-1] ^= 0xff
	r, err := cli.Call(ctx, dest, &Message{Member: "Sum", Payload: p})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(r.Body); got != sum(want) {
		t.Errorf("callee read %q, want %q", got, sum(want))
	}
	r.Close()
	if w, err := p.Write([]byte{1}); CodeOf(err) != CodeInvalid || w != 0 {
		t.Errorf("Write after the send: %d, %v; want 0, INVALID", w, err)
	}
	if p.Bytes() != nil {
		t.Error("Bytes after the send is not nil")
	}

	// Bytes first: the mapping reads as zeros (Bytes writes them over
	// the pooled memfd before mapping it), and what goes in through it
	// is sent.
	mapped := make([]byte, 200<<10)
	q, err := NewPayload(len(mapped))
	if err != nil {
		t.Fatal(err)
	}
	if b := q.Bytes(); !bytes.Equal(b, mapped) {
		t.Fatal("a new payload's mapping is not all zeros")
	} else {
		fill(b[4096:8192])
		fill(mapped[4096:8192])
	}
	if r, err = cli.Call(ctx, dest, &Message{Member: "Sum", Payload: q}); err != nil {
		t.Fatal(err)
	}
	if got := string(r.Body); got != sum(mapped) {
		t.Errorf("payload written through Bytes first: callee read %q, want %q", got, sum(mapped))
	}
	r.Close()

	zeros := make([]byte, 70000)
	zeros[5] = 1
	q, err = NewPayload(len(zeros))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.WriteAt([]byte{1}, 5); err != nil {
		t.Fatal(err)
	}
	if r, err = cli.Call(ctx, dest, &Message{Member: "Sum", Payload: q}); err != nil {
		t.Fatal(err)
	}
	if got := string(r.Body); got != sum(zeros) {
		t.Errorf("mostly unwritten payload: callee read %q, want %q", got, sum(zeros))
	}
	r.Close()
}

// TestMemfdClass: a size's pool class holds it, wastes at most a quarter
// of it, is the same for every size up to it, and grows with the size;
// the bounds are the smallest class and no class above memfdMaxPooled.
func TestMemfdClass(t *testing.T) {
	for _, tc := range []struct{ size, class int }{
		{1, memfdMinClass}, {memfdMinClass, memfdMinClass},
		{memfdMinClass + 1, 80 << 10}, {100 << 10, 112 << 10}, {16 << 20, 16 << 20},
		{16<<20 + 1, 20 << 20}, {17 << 20, 20 << 20}, {10<<20 + 5, 12 << 20},
		{memfdMaxPooled, memfdMaxPooled}, {memfdMaxPooled + 1, 0},
	} {
		if got := memfdClass(tc.size); got != tc.class {
			t.Errorf("memfdClass(%d) = %d, want %d", tc.size, got, tc.class)
		}
	}
	prev := 0
	for size := memfdMinClass; size <= memfdMaxPooled; size += 4093 {
		c := memfdClass(size)
		if c < size || c < prev || (size > memfdMinClass && 4*(c-size) > size) {
			t.Fatalf("memfdClass(%d) = %d (after %d): too small, not growing, or more than a quarter above", size, c, prev)
		}
		if memfdClass(c) != c {
			t.Fatalf("memfdClass(%d) = %d, but memfdClass(%d) = %d", size, c, c, memfdClass(c))
		}
		prev = c
	}
}

// sealedMemfds counts this process's fds that are sealed payload memfds:
// a pooled memfd is not sealed yet, and a receiver closes its own fd once
// it mapped the memfd, so during a Handler those are the sender's.
func sealedMemfds(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Error(err)
		return -1
	}
	n := 0
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, _ := os.Readlink("/proc/self/fd/" + e.Name()); !strings.Contains(l, "memfd:porter-bus-payload") {
			continue
		}
		if seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0); err == nil && seals&unix.F_SEAL_WRITE != 0 {
			n++
		}
	}
	return n
}

// TestMemfdSenderLetsGo: a caller closes the memfd it made for a large
// Body once it is sent, not when the reply comes, so that the pages are
// freed when the callee lets go: while the Handler runs (in this process,
// on a direct channel) the caller's copy goes, and the Handler sees no
// sealed memfd open here. The Handler waits for that (the caller closes
// its copy after its send returned, maybe after the Handler started), for
// up to 10 s: a caller that kept its copy until the reply fails then.
func TestMemfdSenderLetsGo(t *testing.T) {
	testutil.CheckLeaks(t)
	checkPool(t)
	m := busMaster(t)
	count := func(ctx context.Context, c *Call) (*Message, error) {
		n := sealedMemfds(t)
		for deadline := time.Now().Add(10 * time.Second); n != 0 && time.Now().Before(deadline); n = sealedMemfds(t) {
			time.Sleep(5 * time.Millisecond)
		}
		return &Message{Body: []byte(strconv.Itoa(n))}, nil
	}
	srv := dial(t, m, Options{Handler: count})
	cli := dial(t, m, Options{})
	ctx, dest := ctxT(t), FormatAddress(srv.Address())
	// A first call sets the channel up: a call that goes through the
	// master while it does would find the master's copy of the memfd (in
	// this process too) maybe not closed yet.
	r, err := cli.Call(ctx, dest, &Message{Member: "Count"})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	r, err = cli.Call(ctx, dest, &Message{Member: "Count", Body: make([]byte, 1<<20)})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(r.Body); got != "0" {
		t.Errorf("%s sealed memfds open while the callee ran, want 0", got)
	}
	r.Close()
}
