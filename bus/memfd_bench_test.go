package bus

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/porter-ipc/porter/internal/dbuspeer"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// benchTouch answers a call after reading one byte of every page of its
// body: what any receiver pays to get at the bytes (the page faults of a
// memfd mapping, nothing more for an inline body already copied).
func benchTouch(ctx context.Context, c *Call) (*Message, error) {
	var s byte
	for i := 0; i < len(c.Body); i += 4096 {
		s += c.Body[i]
	}
	return &Message{Body: []byte{s}}, nil
}

// payloadSizes are BenchmarkBusPayload's body sizes; the ones up to 60 KiB
// also go inline.
var payloadSizes = []int{4 << 10, 16 << 10, 32 << 10, 60 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20}

// BenchmarkBusPayload sends bodies of 4 KiB to 64 MiB in a call on a
// direct channel, each way a body can travel: inline (up to the inline
// maximum), a fresh memfd per message, a pooled pre-faulted memfd the body
// is copied into, and NewPayload (pooled, built in place: the time to
// write the bytes is not counted, as with a Body built beforehand). It
// reports p50 and, for the pooled ways, pool misses per call (sends that
// found no memfd ready and made one). BUS_PAYLOAD_POOL sets the pool size.
func BenchmarkBusPayload(b *testing.B) {
	for _, size := range payloadSizes {
		for _, way := range []string{"inline", "fresh", "pooled", "inplace"} {
			if way == "inline" && size > 60<<10 {
				continue
			}
			b.Run(fmt.Sprintf("%s/%s", sizeName(size), way), func(b *testing.B) { benchPayload(b, size, way) })
		}
	}
}

// sizeName is 16KiB, 1MiB …
func sizeName(n int) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dKiB", n>>10)
}

func benchPayload(b *testing.B, size int, way string) {
	dbuspeer.Place(b)
	pool := MemfdPoolSize
	if v, err := strconv.Atoi(os.Getenv("BUS_PAYLOAD_POOL")); err == nil && v >= 0 {
		pool = v
	}
	payloadPool.drain()
	if way == "fresh" || way == "inline" {
		payloadPool.size = 0
	} else {
		payloadPool.size = pool
	}
	b.Cleanup(func() {
		payloadPool.drain()
		payloadPool.size = MemfdPoolSize
	})
	m := busMaster(b)
	srv := dial(b, m, Options{Handler: benchTouch})
	cli := dial(b, m, Options{})
	if way == "inline" {
		cli.welcome.MemfdThreshold = 1 << 31
	} else {
		cli.welcome.MemfdThreshold = 0
	}
	dest := FormatAddress(srv.Address())
	body := make([]byte, size)
	fill(body)
	ctx := context.Background()
	if r, err := cli.Call(ctx, dest, &Message{Member: "Touch", Body: body[:1]}); err != nil { // connects
		b.Fatal(err)
	} else {
		r.Close()
	}
	// Let the pool fill as it would between bursts.
	if p, err := NewPayload(size); err == nil {
		p.Close()
	}
	payloadPool.fillers.Wait()
	misses0 := payloadPool.misses.Load()
	lat := make([]time.Duration, 0, b.N)
	b.SetBytes(int64(size))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		msg := &Message{Member: "Touch", Body: body}
		t0 := time.Now()
		var build time.Duration
		if way == "inplace" {
			p, err := NewPayload(size)
			if err != nil {
				b.Fatal(err)
			}
			buf := p.Bytes() // the mapping is the send's cost, counted
			t1 := time.Now()
			copy(buf, body) // the sender writing its bytes, not counted
			build = time.Since(t1)
			msg = &Message{Member: "Touch", Payload: p}
		}
		r, err := cli.Call(ctx, dest, msg)
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0)-build)
		r.Close()
	}
	b.StopTimer()
	if way == "pooled" || way == "inplace" {
		b.ReportMetric(float64(payloadPool.misses.Load()-misses0)/float64(b.N), "misses/op")
	}
	testutil.ReportLatency(b, lat)
}

// BenchmarkMemfdSteps takes a 16 MiB body through every step of the memfd
// path, in one thread, each step timed on its own in the thread's CPU
// time and reported as its p50 in µs (metric "<step>-µs"), and the total
// as cpu-µs/op: what the bus does around a 16 MiB call,
// without the bus. The sender starts from a []byte and the receiver reads
// every byte, as in BenchmarkBusMasterCall16M. Ways:
//
//   - copy: memfd_create and ftruncate, fallocate (what the pool does
//     ahead), pwrite of the []byte (a Body, or Payload.Write), seal,
//     sendmsg, then the receiver's recvmsg, seal and size check, mmap (as
//     openPayload: the read takes the page faults), read, munmap, and the
//     last close (the pages are freed then);
//   - copy-populate: copy with the receiver mapping with MAP_POPULATE;
//   - fresh: copy without the fallocate, the pwrite allocating the pages
//     as it goes (a pool miss, or no pool);
//   - inplace: copy with the sender mapping the memfd writable and
//     copying into the mapping (Payload.Bytes) instead of pwrite, then
//     unmapping it before sealing.
func BenchmarkMemfdSteps(b *testing.B) {
	for _, way := range []string{"copy", "copy-populate", "fresh", "inplace", "inplace-zeroed"} {
		b.Run(way, func(b *testing.B) { benchMemfdSteps(b, way) })
	}
}

func benchMemfdSteps(b *testing.B, way string) {
	dbuspeer.Place(b)
	const size = 16 << 20
	src := make([]byte, size)
	fill(src)
	want := dbuspeer.Checksum(src)
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(sp[0])
	defer unix.Close(sp[1])
	inPlace := strings.HasPrefix(way, "inplace")
	fresh := way == "fresh"
	recvFlags := unix.MAP_PRIVATE // as openPayload maps
	if strings.HasSuffix(way, "-populate") {
		recvFlags |= unix.MAP_POPULATE
	}
	// Each step is timed in CPU time of the thread that runs it (all of
	// them, the kernel's work included): other processes on the CPU do
	// not count, as they would in wall time.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cpuNow := func() time.Duration {
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
			b.Fatal(err)
		}
		return time.Duration(ts.Nano())
	}
	var names []string
	steps := map[string][]time.Duration{}
	t := cpuNow()
	step := func(name string) {
		now := cpuNow()
		if _, ok := steps[name]; !ok {
			names = append(names, name)
		}
		steps[name] = append(steps[name], now-t)
		t = now
	}
	must := func(what string, err error) {
		if err != nil {
			b.Fatalf("%s: %v", what, err)
		}
	}
	oob := make([]byte, unix.CmsgSpace(4))
	hdr := make([]byte, 16)
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		t = cpuNow()
		fd, err := unix.MemfdCreate("steps", unix.MFD_ALLOW_SEALING|unix.MFD_CLOEXEC)
		must("memfd_create", err)
		must("ftruncate", unix.Ftruncate(fd, size))
		step("create")
		if !fresh {
			must("fallocate", unix.Fallocate(fd, 0, 0, size))
			step("fallocate")
		}
		if way == "inplace-zeroed" {
			zero := make([]byte, 64<<10)
			for off := 0; off < size; off += len(zero) {
				_, err := unix.Pwrite(fd, zero, int64(off))
				must("pwrite", err)
			}
			step("zero")
		}
		if inPlace {
			w, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
			must("mmap", err)
			step("send-mmap")
			copy(w, src)
			step("fill")
			must("munmap", unix.Munmap(w))
			step("send-munmap")
		} else {
			for off := 0; off < size; {
				n, err := unix.Pwrite(fd, src[off:], int64(off))
				must("pwrite", err)
				off += n
			}
			step("pwrite")
		}
		_, err = unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, memfdSeals)
		must("seal", err)
		step("seal")
		must("sendmsg", unix.Sendmsg(sp[0], hdr, unix.UnixRights(fd), nil, 0))
		step("sendmsg")
		_, oobn, _, _, err := unix.Recvmsg(sp[1], hdr, oob, unix.MSG_CMSG_CLOEXEC)
		must("recvmsg", err)
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		must("cmsg", err)
		rfds, err := unix.ParseUnixRights(&msgs[0])
		must("rights", err)
		rf := os.NewFile(uintptr(rfds[0]), "payload")
		step("recvmsg")
		if text := checkMemfd(rf, size, 1<<30); text != "" {
			b.Fatal(text)
		}
		step("check")
		r, err := unix.Mmap(rfds[0], 0, size, unix.PROT_READ, recvFlags)
		must("mmap", err)
		rf.Close()
		step("recv-mmap")
		if dbuspeer.Checksum(r) != want {
			b.Fatal("checksum differs")
		}
		step("read")
		must("munmap", unix.Munmap(r))
		step("recv-munmap")
		unix.Close(fd) // the last reference: the pages go
		step("free")
	}
	b.StopTimer()
	var total time.Duration
	for _, n := range names {
		d := steps[n]
		for _, x := range d {
			total += x
		}
		slices.Sort(d)
		b.ReportMetric(float64(d[len(d)/2].Nanoseconds())/1e3, n+"-µs")
	}
	b.ReportMetric(float64(total.Nanoseconds())/1e3/float64(b.N), "cpu-µs/op")
}

// BenchmarkMemfdSend: what a sender's process spends making one sealed
// memfd of a Body (the pool's allocation ahead, the pwrite, the seal) and
// freeing it (the close, the last reference here), for sizes on and off
// the pool's classes; cpu-µs/op is the process's CPU time (getrusage),
// the refill's included, per memfd.
func BenchmarkMemfdSend(b *testing.B) {
	for _, size := range []int{10<<20 + 5, 16 << 20, 17 << 20} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			payloadPool.drain()
			b.Cleanup(payloadPool.drain)
			body := make([]byte, size)
			send := func() {
				f, err := bodyMemfd(body)
				if err != nil {
					b.Fatal(err)
				}
				f.Close()
				payloadPool.fillers.Wait() // the refill counted with its memfd
			}
			send() // the class's first memfds
			var ru0, ru1 unix.Rusage
			b.SetBytes(int64(size))
			b.ResetTimer()
			unix.Getrusage(unix.RUSAGE_SELF, &ru0)
			for range b.N {
				send()
			}
			unix.Getrusage(unix.RUSAGE_SELF, &ru1)
			b.StopTimer()
			cpu := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
			b.ReportMetric(float64(cpu)/1e3/float64(b.N), "cpu-µs/op")
			b.ReportMetric(float64(memfdClass(size)), "class-B")
		})
	}
}
