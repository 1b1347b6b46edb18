// Command server is the serving half of porter's capability example
// (docs/capabilities.md): it hands out per-client counters, each an
// object of its own, through a Counters object that it gives to the
// program it starts, as PORTER_CAP_COUNTERS.
//
//	server client
//
// When the program exits, the server prints every counter, revokes them
// and exits with the program's status.
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"sync"

	"github.com/porter-ipc/porter/cap"
)

// Counter is one client's counter.
type Counter struct {
	mu sync.Mutex
	n  int64
}

// Add adds n and returns the sum.
func (c *Counter) Add(ctx context.Context, n int64) (int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n += n
	return c.n, nil
}

// Counters makes counters, one per name.
type Counters struct {
	srv *cap.Server
	mu  sync.Mutex
	m   map[string]*entry
}

type entry struct {
	c   *Counter
	ref *cap.Ref
}

// New returns the counter of name, made at its first call.
func (cs *Counters) New(ctx context.Context, name string) (*cap.Ref, error) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if e, ok := cs.m[name]; ok {
		return e.ref, nil // the server keeps its Ref; the caller gets one of its own
	}
	c := &Counter{}
	ref, err := cs.srv.Export(c)
	if err != nil {
		return nil, err
	}
	cs.m[name] = &entry{c, ref}
	return ref, nil
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: server program [args...]")
		os.Exit(2)
	}
	srv := cap.NewServer()
	cs := &Counters{srv: srv, m: map[string]*entry{}}
	counters, err := srv.Export(cs)
	if err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(1)
	}
	cmd := exec.Command(os.Args[1], os.Args[2:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cap.ToChild(cmd, "COUNTERS", counters); err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(1)
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(1)
	}
	counters.Close() // the child holds it now
	err = cmd.Wait()

	cs.mu.Lock()
	names := make([]string, 0, len(cs.m))
	for name := range cs.m {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		e := cs.m[name]
		e.c.mu.Lock()
		fmt.Printf("server: counter %s = %d\n", name, e.c.n)
		e.c.mu.Unlock()
		srv.Revoke(e.ref)
		e.ref.Close()
	}
	cs.mu.Unlock()
	srv.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(1)
	}
}
