package bus

import (
	"context"
	"fmt"
	"math/bits"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// memfdSeals are the seals a payload memfd carries (docs/protocol-bus.md,
// "Large payloads: sealed memfds").
const memfdSeals = unix.F_SEAL_WRITE | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// Memfd pool defaults, chosen by BenchmarkBusPayload (docs/protocol-bus.md,
// "Left to measure").
const (
	// MemfdPoolSize is how many pre-faulted memfds the pool keeps ready
	// per size class.
	MemfdPoolSize = 4
	// memfdMinClass is the smallest pooled size class.
	memfdMinClass = 64 << 10
	// memfdMaxPooled is the largest size class the pool keeps; larger
	// payloads get a fresh memfd.
	memfdMaxPooled = 64 << 20
	// memfdClassBytes bounds the memory one class holds ready: a class
	// keeps min(MemfdPoolSize, memfdClassBytes/class) memfds, at least
	// one (the 64 MiB class keeps one).
	memfdClassBytes = 64 << 20
)

// newMemfd creates an unsealed, sealable memfd of size bytes; prefault
// allocates its pages now (fallocate), off the send path.
func newMemfd(size int, prefault bool) (*os.File, error) {
	fd, err := unix.MemfdCreate("porter-bus-payload", unix.MFD_ALLOW_SEALING|unix.MFD_CLOEXEC)
	if err != nil {
		return nil, &os.SyscallError{Syscall: "memfd_create", Err: err}
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return nil, &os.SyscallError{Syscall: "ftruncate", Err: err}
	}
	if prefault && size > 0 {
		if err := unix.Fallocate(fd, 0, 0, int64(size)); err != nil {
			unix.Close(fd)
			return nil, &os.SyscallError{Syscall: "fallocate", Err: err}
		}
	}
	return os.NewFile(uintptr(fd), "porter-bus-payload"), nil
}

// sealMemfd sets the memfd's size to size and seals it. Every writable
// shared mapping must be gone (F_SEAL_WRITE fails with EBUSY otherwise).
func sealMemfd(f *os.File, size int) error {
	fd := int(f.Fd())
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		return &os.SyscallError{Syscall: "ftruncate", Err: err}
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, memfdSeals); err != nil {
		return &os.SyscallError{Syscall: "fcntl F_ADD_SEALS", Err: err}
	}
	return nil
}

// memfdClass is the pool's size class for size bytes: size rounded up to
// a quarter of the power of two below it (for 2^k < size ≤ 2^(k+1): a
// multiple of 2^k/4, so 1.25, 1.5, 1.75 or 2 × 2^k), at least
// memfdMinClass; 0 when size is above memfdMaxPooled. A pooled memfd is
// allocated whole and cut to the body's size at the seal: a class at most
// a quarter above the size wastes at most that much allocating and
// freeing (BenchmarkMemfdSend: a 17 MiB body cost 17.3 ms of the sender's
// CPU in a 32 MiB class, the power of two above it; 10.4–12.9 ms in a
// 20 MiB one).
func memfdClass(size int) int {
	if size > memfdMaxPooled {
		return 0
	}
	if size <= memfdMinClass {
		return memfdMinClass
	}
	step := (1 << (bits.Len(uint(size-1)) - 1)) / 4
	return (size + step - 1) / step * step
}

// memfdPool keeps pre-sized, pre-faulted, unsealed memfds per size class,
// refilled in the background, so that a send pays neither the allocation
// nor the page faults. A class is filled on its first use.
type memfdPool struct {
	mu      sync.Mutex
	classes map[int]chan *os.File
	filling map[int]bool
	size    int            // memfds kept per class
	fillers sync.WaitGroup // refills running
	misses  atomic.Uint64  // gets that found their class empty
}

// payloadPool is the process's pool.
var payloadPool = &memfdPool{classes: map[int]chan *os.File{}, filling: map[int]bool{}, size: MemfdPoolSize}

// get returns an unsealed memfd of at least size bytes (its size is its
// class's until sealed): a pooled one when ready, a fresh one otherwise.
// Either way the class is refilled in the background.
func (p *memfdPool) get(size int) (*os.File, error) {
	class := memfdClass(size)
	if class == 0 || p.size == 0 {
		return newMemfd(size, false)
	}
	p.mu.Lock()
	ch := p.classes[class]
	if ch == nil {
		ch = make(chan *os.File, max(1, min(p.size, memfdClassBytes/class)))
		p.classes[class] = ch
	}
	p.mu.Unlock()
	var f *os.File
	select {
	case f = <-ch:
	default:
	}
	p.refill(class, ch)
	if f != nil {
		return f, nil
	}
	p.misses.Add(1)
	return newMemfd(class, false)
}

// refill tops the class up in the background, one filler per class.
func (p *memfdPool) refill(class int, ch chan *os.File) {
	p.mu.Lock()
	if p.filling[class] || len(ch) == cap(ch) {
		p.mu.Unlock()
		return
	}
	p.filling[class] = true
	p.fillers.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.fillers.Done()
		for len(ch) < cap(ch) {
			f, err := newMemfd(class, true)
			if err != nil {
				break
			}
			select {
			case ch <- f:
			default:
				f.Close()
			}
		}
		p.mu.Lock()
		p.filling[class] = false
		p.mu.Unlock()
	}()
}

// drain waits for the refills and closes every pooled memfd (tests that
// count fds, benchmarks).
func (p *memfdPool) drain() {
	p.fillers.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	for class, ch := range p.classes {
		for len(ch) > 0 {
			(<-ch).Close()
		}
		delete(p.classes, class)
	}
}

// Payload is a message body written straight into a memfd, which is then
// sent as it is, without a copy. The bytes go in by Write or WriteAt (the
// kernel copies them in, as into a file) or through Bytes (a writable
// shared mapping of the memfd). Put it in Message.Payload and send it:
// the send unmaps, seals and sends it, then closes it (sent or not); a
// Payload is sent at most once. Close discards one that is not sent. A
// Payload is not safe for concurrent use.
//
// On 4 KiB pages Write is the cheaper way (docs/protocol-bus.md, "Large
// payloads: sealed memfds", has the steps measured): the kernel copies
// into the memfd's pages, where a mapping costs zeroing every page and
// setting up and tearing down its entry.
type Payload struct {
	f       *os.File
	buf     []byte
	size    int
	off     int   // where the next Write goes
	written bool  // Write or WriteAt wrote
	err     error // why Bytes could not map the payload, for the send
}

// zeros is what Bytes writes over a pooled memfd before it maps it.
var zeros [64 << 10]byte

// NewPayload returns a Payload of size bytes (0 < size ≤ max_memfd of the
// bus it will go to), taken from the pool of pre-faulted memfds when one
// is ready. Its bytes are zero until written.
func NewPayload(size int) (*Payload, error) {
	if size <= 0 {
		return nil, local("payload", CodeInvalid, "payload of %d bytes", size)
	}
	f, err := payloadPool.get(size)
	if err != nil {
		return nil, fmt.Errorf("bus: payload: %w", err)
	}
	return &Payload{f: f, size: size}, nil
}

// Bytes is the payload's writable mapping, made on the first call:
// len(Bytes()) is its size. It is valid until the Payload is sent or
// closed. It is nil once the Payload is sent or closed, or if the mapping
// failed; the send then fails with the reason.
func (p *Payload) Bytes() []byte {
	if p.buf != nil || p.f == nil || p.err != nil {
		return p.buf
	}
	flags := unix.MAP_SHARED
	if memfdClass(p.size) != 0 {
		// Pooled: the pages exist (fallocate) but are not initialised,
		// and mapped so each would fault in alone, zeroed on the way.
		// Written with zeros first (unless Write wrote: its pages are
		// ready), they map 16 a time: 16 MiB in 6.7 ms instead of 9.0,
		// unmapping included (BenchmarkMemfdSteps, inplace-zeroed
		// against inplace).
		if !p.written {
			for off := 0; off < p.size; {
				n, err := unix.Pwrite(int(p.f.Fd()), zeros[:min(len(zeros), p.size-off)], int64(off))
				if err == unix.EINTR {
					continue
				}
				if err != nil {
					p.err = fmt.Errorf("bus: payload: %w", &os.SyscallError{Syscall: "pwrite", Err: err})
					return nil
				}
				off += n
			}
		}
		flags |= unix.MAP_POPULATE
	}
	buf, err := unix.Mmap(int(p.f.Fd()), 0, p.size, unix.PROT_READ|unix.PROT_WRITE, flags)
	if err != nil {
		p.err = fmt.Errorf("bus: payload: %w", &os.SyscallError{Syscall: "mmap", Err: err})
		return nil
	}
	p.buf = buf
	return buf
}

// WriteAt writes b at offset off of the payload (io.WriterAt). Bytes past
// the payload's size are refused (CodeInvalid) and nothing is written.
func (p *Payload) WriteAt(b []byte, off int64) (int, error) {
	if p.f == nil {
		return 0, local("payload", CodeInvalid, "payload already sent or closed")
	}
	if off < 0 || off > int64(p.size) || int64(len(b)) > int64(p.size)-off {
		return 0, local("payload", CodeInvalid, "%d bytes at offset %d of a %d-byte payload", len(b), off, p.size)
	}
	p.written = true
	n := 0
	for n < len(b) {
		w, err := unix.Pwrite(int(p.f.Fd()), b[n:], off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("bus: payload: %w", &os.SyscallError{Syscall: "pwrite", Err: err})
		}
		n += w
	}
	return n, nil
}

// Write writes b after what the earlier Writes wrote (io.Writer), from
// offset 0. Bytes past the payload's size are refused as in WriteAt.
func (p *Payload) Write(b []byte) (int, error) {
	n, err := p.WriteAt(b, int64(p.off))
	p.off += n
	return n, err
}

// Len is the payload's size in bytes.
func (p *Payload) Len() int { return p.size }

// Close unmaps and closes the payload. It is idempotent; the send calls
// it.
func (p *Payload) Close() error {
	if p == nil {
		return nil
	}
	if p.buf != nil {
		unix.Munmap(p.buf)
		p.buf = nil
	}
	if p.f != nil {
		p.f.Close()
		p.f = nil
	}
	return nil
}

// seal unmaps the payload, seals its memfd and hands the file over.
func (p *Payload) seal() (*os.File, error) {
	if p.f == nil {
		return nil, local("send", CodeInvalid, "payload already sent or closed")
	}
	if p.err != nil {
		p.Close()
		return nil, p.err
	}
	if p.buf != nil {
		unix.Munmap(p.buf)
		p.buf = nil
	}
	f := p.f
	p.f = nil
	if err := sealMemfd(f, p.size); err != nil {
		f.Close()
		return nil, fmt.Errorf("bus: payload: %w", err)
	}
	return f, nil
}

// bodyMemfd copies body into a sealed memfd (from the pool).
func bodyMemfd(body []byte) (*os.File, error) {
	f, err := payloadPool.get(len(body))
	if err != nil {
		return nil, err
	}
	for off := 0; off < len(body); {
		n, err := unix.Pwrite(int(f.Fd()), body[off:], int64(off))
		if err != nil {
			f.Close()
			return nil, &os.SyscallError{Syscall: "pwrite", Err: err}
		}
		off += n
	}
	if err := sealMemfd(f, len(body)); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// attachPayload decides how m's body travels in f, a data frame built by
// dataFrame, to a peer that accepts (PeerAccepts… bits): inline, or as a
// sealed memfd when m carries a sealed Payload, when the body is at least
// memfd_threshold, or when it does not fit inline. It returns the files to
// send (m.Files, then the memfd) and a memfd it made, which the caller
// closes once sent.
func (e *Endpoint) attachPayload(f *Frame, m *Message, accepts uint8) ([]*os.File, *os.File, error) {
	size := len(f.Body)
	if m.sealed != nil {
		size = m.sealedSize
	} else if size == 0 || size < int(e.welcome.MemfdThreshold) && f.Size() <= int(e.welcome.MaxFrame)-MasterRoom {
		return m.Files, nil, nil
	}
	if accepts&PeerAcceptsMemfd == 0 {
		return nil, nil, local("send", CodeFdsRefused, "a %d-byte body must go as a memfd, and the receiver accepts none", size)
	}
	if uint64(size) > e.welcome.MaxMemfd {
		return nil, nil, local("send", CodeTooLarge, "%d-byte body, above max_memfd %d", size, e.welcome.MaxMemfd)
	}
	mf, made := m.sealed, (*os.File)(nil)
	if mf == nil {
		var err error
		if mf, err = bodyMemfd(f.Body); err != nil {
			return nil, nil, fmt.Errorf("bus: send: %w", err)
		}
		made = mf
	}
	f.Body = nil
	f.SetField(FieldMemfd, Memfd{Size: uint64(size)}.Encode())
	files := make([]*os.File, 0, len(m.Files)+1)
	files = append(append(files, m.Files...), mf)
	return files, made, nil
}

// openPayload checks the memfd a received data frame carries (the last of
// files) and maps it read-only: f.Body becomes the mapping, which the
// Message made of f owns (Message.Close unmaps it). It returns the other
// files. A frame without MEMFD is returned as it is. A memfd that is not
// sealed with all four seals, whose size differs from the field, or that
// is above max_memfd is BAD_MEMFD, and every fd of the frame is closed.
func (e *Endpoint) openPayload(f *Frame, files []*os.File) ([]*os.File, error) {
	v, ok := f.Field(FieldMemfd)
	if !ok {
		return files, nil
	}
	mf, err := ParseMemfd(v)
	if err != nil || len(files) == 0 {
		closeFiles(files)
		return nil, local("read", CodeBadMemfd, "MEMFD field without its memfd")
	}
	last := files[len(files)-1]
	rest := files[:len(files)-1]
	defer last.Close()
	if text := checkMemfd(last, mf.Size, e.welcome.MaxMemfd); text != "" {
		closeFiles(rest)
		return nil, local("read", CodeBadMemfd, "%s", text)
	}
	if mf.Size == 0 {
		return rest, nil
	}
	var b []byte
	rc, err := last.SyscallConn()
	if err == nil {
		cerr := rc.Control(func(fd uintptr) {
			// No MAP_POPULATE: it saves nothing measurable for a body
			// read whole (BenchmarkMemfdSteps, copy-populate against
			// copy), and the receiver would pay for every page even when
			// it reads few, and for a sparse memfd allocate them all.
			b, err = unix.Mmap(int(fd), 0, int(mf.Size), unix.PROT_READ, unix.MAP_PRIVATE)
		})
		if err == nil {
			err = cerr
		}
	}
	if err != nil {
		closeFiles(rest)
		return nil, local("read", CodeBadMemfd, "mmap: %v", err)
	}
	f.Body = b
	return rest, nil
}

// mappedBody is the read-only mapping a received frame's body is, or nil
// when the body came inline: Decode refuses an inline body with MEMFD, so
// a non-empty body beside a MEMFD field is openPayload's mapping.
func mappedBody(f *Frame) []byte {
	if f == nil || len(f.Body) == 0 {
		return nil
	}
	if _, ok := f.Field(FieldMemfd); !ok {
		return nil
	}
	return f.Body
}

// dropFrame lets go of a received frame nobody takes: its files closed,
// its payload mapping unmapped.
func dropFrame(f *Frame, files []*os.File) {
	closeFiles(files)
	if b := mappedBody(f); b != nil {
		unix.Munmap(b)
		f.Body = nil
	}
}

// unmap releases the message's payload mapping, if any; Body is then nil.
func (m *Message) unmap() {
	if m != nil && m.mapped != nil {
		unix.Munmap(m.mapped)
		m.mapped, m.Body = nil, nil
	}
}

// takePayload is openPayload for a received data frame, after the
// endpoint's own refusal (Options.NoMemfd: FDS_REFUSED). A signal's body
// is copied out of the mapping, which is unmapped at once: one signal
// may go to several Watchers, whose Notices then own their bytes.
func (e *Endpoint) takePayload(f *Frame, files []*os.File) ([]*os.File, error) {
	if _, ok := f.Field(FieldMemfd); !ok {
		return files, nil
	}
	if e.opts.NoMemfd {
		closeFiles(files)
		return nil, local("read", CodeFdsRefused, "%s accepts no memfds", FormatAddress(f.Destination))
	}
	files, err := e.openPayload(f, files)
	if err == nil && f.Type == TypeSignal {
		if b := mappedBody(f); b != nil {
			f.Body = append([]byte(nil), b...)
			unix.Munmap(b)
		}
	}
	return files, err
}

// refusedPayload answers a data frame whose memfd was refused (err, from
// takePayload): a CALL that wants a reply gets an ERROR through send, a
// REPLY fails its call through fail, a SIGNAL is logged.
func (e *Endpoint) refusedPayload(f *Frame, err error, send func(*Frame) error, fail func(error)) {
	switch f.Type {
	case TypeCall:
		if f.Flags&FlagNoReplyExpected != 0 {
			e.logf("call from %s: %v", FormatAddress(f.Source), err)
			return
		}
		rf, ferr := errorReply(err).dataFrame(TypeError, "")
		if ferr != nil {
			return
		}
		rf.Serial = e.serial.Add(1)
		rf.ReplySerial = f.Serial
		rf.Source, rf.Destination = f.Destination, f.Source
		if serr := send(rf); serr != nil {
			e.logf("error reply to %s: %v", FormatAddress(f.Source), serr)
		}
	case TypeReply:
		fail(err)
	default:
		e.logf("signal from %s: %v", FormatAddress(f.Source), err)
	}
}

// sealReply seals a Handler reply's Payload for attachPayload; the sealed
// memfd is then the reply's to send and close.
func (m *Message) sealReply() error {
	if m.Payload == nil {
		return nil
	}
	p := m.Payload
	m.Payload = nil
	if len(m.Body) != 0 {
		p.Close()
		return local("reply", CodeInvalid, "both a Body and a Payload")
	}
	sf, err := p.seal()
	p.Close()
	if err != nil {
		return err
	}
	m.sealed, m.sealedSize = sf, p.size
	return nil
}

// takesMemfd reports whether the endpoint at addr accepts memfds, as the
// master knows it (RESOLVE: IDENTITY's flag). A routed reply that needs a
// memfd asks first, since the master would refuse it to the callee and
// leave the caller waiting. When the master does not answer, true: the
// master's own check stays.
func (e *Endpoint) takesMemfd(addr uint64) bool {
	ctx, cancel := context.WithTimeout(e.ctx, requestTimeout)
	defer cancel()
	id, err := e.Resolve(ctx, FormatAddress(addr))
	if err != nil {
		return true
	}
	return id.Flags&IdentityMemfd != 0
}
