// Command client is the calling half of porter's capability example
// (docs/capabilities.md). Started by the example server with the
// capability COUNTERS, it gets a counter of its own, adds to it, and
// delegates it to a child (itself, with -child) that adds to it too:
//
//	server client
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"time"

	"github.com/porter-ipc/porter/cap"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	if len(os.Args) > 1 && os.Args[1] == "-child" {
		err = child(ctx)
	} else {
		err = parent(ctx)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		os.Exit(1)
	}
}

func parent(ctx context.Context) error {
	counters, err := cap.Inherit("COUNTERS")
	if err != nil {
		return err
	}
	defer counters.Close()

	// A result may be a capability: a counter of our own.
	var mine *cap.Ref
	if err := counters.Call(ctx, "New", "alice", &mine); err != nil {
		return err
	}
	defer mine.Close()
	var n int64
	if err := mine.Call(ctx, "Add", 1, &n); err != nil {
		return err
	}
	fmt.Println("client: alice =", n)

	// Delegate it to a child we start: the child can call the counter,
	// and nothing else of the server (it never sees COUNTERS).
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, "-child")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cap.ToChild(cmd, "COUNTER", mine); err != nil {
		return err
	}
	if err := cmd.Run(); err != nil {
		return err
	}

	if err := mine.Call(ctx, "Add", 1, &n); err != nil {
		return err
	}
	fmt.Println("client: alice =", n)
	return nil
}

func child(ctx context.Context) error {
	counter, err := cap.Inherit("COUNTER")
	if err != nil {
		return err
	}
	defer counter.Close()
	if _, err := cap.Inherit("COUNTERS"); err == nil {
		return fmt.Errorf("the child holds COUNTERS: it was not to")
	}
	var n int64
	if err := counter.Call(ctx, "Add", 10, &n); err != nil {
		return err
	}
	fmt.Println("child: alice =", n)
	return nil
}
