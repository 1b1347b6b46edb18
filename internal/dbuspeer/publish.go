package dbuspeer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync/atomic"
	"time"
)

// The multicast benchmarks' subscriber processes (issue 11): each child
// holds some subscribers of a bus (or raw sockets), counts what they
// receive in a Tally, and answers its parent over a pipe. The parent
// drives them as a Group: it asks every child for a count (its stdin),
// publishes, and reads each child's answer (its stdout) once the child
// has that many deliveries. So the parent waits on pipes, never on a
// timer, and the deliveries are counted where they arrive.
//
// The wire: each message either way is two little-endian uint64s. Parent
// to child: the delivery count to wait for, and 0. Child to parent: the
// count it has, and the deliveries it knows it missed (lost at the bus or
// dropped by its client); the first answer, unasked, says it is ready.
// The child's stdin closing tells it to stop.

// Tally counts a subscriber process's deliveries and answers its parent.
type Tally struct {
	got, target, lost atomic.Int64
	wake              chan struct{}
	// Check, if set, is called when a count is a second late: it returns
	// the deliveries the process knows it missed (0: none), which Serve
	// then reports instead of waiting on.
	Check func() int64
}

// NewTally returns an empty tally.
func NewTally() *Tally { return &Tally{wake: make(chan struct{}, 1)} }

// Add counts n deliveries; safe from any goroutine.
func (t *Tally) Add(n int64) {
	if t.got.Add(n) >= t.target.Load() {
		select {
		case t.wake <- struct{}{}:
		default:
		}
	}
}

// Lost counts n deliveries that will not come.
func (t *Tally) Lost(n int64) {
	t.lost.Add(n)
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// Serve says ready on w, then answers each count read from r once the
// tally has it (or knows of a loss that will keep it from coming), until
// r ends; it returns nil then.
func (t *Tally) Serve(r io.Reader, w io.Writer) error {
	t.target.Store(1 << 62)
	late := time.NewTimer(time.Second)
	defer late.Stop()
	if err := writePair(w, 0, uint64(t.lost.Load())); err != nil {
		return err
	}
	for {
		want, _, err := readPair(r)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		t.target.Store(int64(want))
		for t.got.Load() < int64(want) && t.lost.Load() == 0 {
			if !late.Stop() {
				select {
				case <-late.C:
				default:
				}
			}
			late.Reset(time.Second)
			select {
			case <-t.wake:
			case <-late.C:
				if t.Check != nil {
					if l := t.Check(); l > 0 {
						t.Lost(l)
					}
				}
			}
		}
		if err := writePair(w, uint64(t.got.Load()), uint64(t.lost.Load())); err != nil {
			return err
		}
	}
}

func writePair(w io.Writer, a, b uint64) error {
	var buf [16]byte
	binary.LittleEndian.PutUint64(buf[:], a)
	binary.LittleEndian.PutUint64(buf[8:], b)
	_, err := w.Write(buf[:])
	return err
}

func readPair(r io.Reader) (a, b uint64, err error) {
	var buf [16]byte
	if _, err := io.ReadFull(r, buf[:]); err != nil {
		return 0, 0, err
	}
	return binary.LittleEndian.Uint64(buf[:]), binary.LittleEndian.Uint64(buf[8:]), nil
}

// Sub is one subscriber process of a Group: its command (not started)
// and how many deliveries each published message brings it.
type Sub struct {
	Cmd *exec.Cmd
	Per int64
}

type subProc struct {
	Sub
	in  io.WriteCloser
	out *os.File
	got int64 // its count at the last Wait
}

// Group is a set of subscriber processes the parent drives.
type Group struct {
	procs []*subProc
	// Timeout bounds each Wait and the start (default 30 s).
	Timeout time.Duration
}

// StartGroup starts the subscriber processes and waits until every one
// is ready. On error the ones started are stopped.
func StartGroup(subs []Sub) (*Group, error) {
	g := &Group{Timeout: 30 * time.Second}
	for _, s := range subs {
		p := &subProc{Sub: s}
		in, err := s.Cmd.StdinPipe()
		if err != nil {
			g.Close()
			return nil, err
		}
		r, w, err := os.Pipe()
		if err != nil {
			in.Close()
			g.Close()
			return nil, err
		}
		s.Cmd.Stdout = w
		err = s.Cmd.Start()
		w.Close()
		if err != nil {
			in.Close()
			r.Close()
			g.Close()
			return nil, fmt.Errorf("starting a subscriber process: %w", err)
		}
		p.in, p.out = in, r
		g.procs = append(g.procs, p)
	}
	for i, p := range g.procs {
		if _, err := g.read(p); err != nil {
			g.Close()
			return nil, fmt.Errorf("subscriber process %d (pid %d) not ready: %w", i, p.Cmd.Process.Pid, err)
		}
	}
	return g, nil
}

// PIDs lists the subscriber processes.
func (g *Group) PIDs() []int {
	out := make([]int, len(g.procs))
	for i, p := range g.procs {
		out[i] = p.Cmd.Process.Pid
	}
	return out
}

// Ask tells every process that msgs messages were (or are about to be)
// published in all, so that it answers once it has msgs × Per deliveries.
func (g *Group) Ask(msgs int64) error {
	for i, p := range g.procs {
		if err := writePair(p.in, uint64(msgs*p.Per), 0); err != nil {
			return fmt.Errorf("subscriber process %d: %w", i, err)
		}
	}
	return nil
}

// Wait reads every process's answer to the last Ask and returns the
// deliveries counted over all of them.
func (g *Group) Wait() (int64, error) {
	var sum int64
	for i, p := range g.procs {
		n, err := g.read(p)
		if err != nil {
			return sum, fmt.Errorf("subscriber process %d (pid %d): %w", i, p.Cmd.Process.Pid, err)
		}
		p.got = n
		sum += n
	}
	return sum, nil
}

func (g *Group) read(p *subProc) (int64, error) {
	if err := p.out.SetReadDeadline(time.Now().Add(g.Timeout)); err != nil {
		return 0, err
	}
	got, lost, err := readPair(p.out)
	if err != nil {
		return 0, fmt.Errorf("%w (it had %d deliveries)", err, p.got)
	}
	if lost != 0 {
		return int64(got), fmt.Errorf("%d deliveries lost or dropped (it has %d)", lost, got)
	}
	return int64(got), nil
}

// Close stops every process (closing its stdin) and waits for it.
func (g *Group) Close() error {
	var first error
	for _, p := range g.procs {
		p.in.Close()
	}
	for i, p := range g.procs {
		if err := p.Cmd.Wait(); err != nil && first == nil {
			first = fmt.Errorf("subscriber process %d: %w", i, err)
		}
		p.out.Close()
	}
	g.procs = nil
	return first
}
