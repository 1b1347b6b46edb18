package bus_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/porter-ipc/porter/bus"
)

// A 4 MiB body written in place: NewPayload hands the sender a writable
// mapping of a memfd from the pool, the call seals and sends that memfd
// (no copy), and the service reads a read-only mapping of the same pages.
// A Payload goes once: the next message takes a new one.
func ExampleNewPayload() {
	dir, err := os.MkdirTemp("", "bus-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	m, err := bus.Listen(filepath.Join(dir, "bus"), nil)
	if err != nil {
		log.Fatal(err)
	}
	go m.Serve()
	defer m.Close()

	ctx := context.Background()
	count := func(ctx context.Context, c *bus.Call) (*bus.Message, error) {
		// c.Body is the sealed memfd, mapped read-only, until we return.
		n := 0
		for _, b := range c.Body {
			if b == 'x' {
				n++
			}
		}
		return &bus.Message{Body: fmt.Appendf(nil, "%d of %d", n, len(c.Body))}, nil
	}
	srv, err := bus.DialOptions(ctx, m.Addr(), bus.Options{Handler: count})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	if _, err := srv.RequestName(ctx, "com.example.count", 0); err != nil {
		log.Fatal(err)
	}

	cli, err := bus.Dial(m.Addr())
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	p, err := bus.NewPayload(4 << 20)
	if err != nil {
		log.Fatal(err)
	}
	buf := p.Bytes() // write the body here, where it will be sent from
	for i := range buf {
		buf[i] = 'x'
	}
	reply, err := cli.Call(ctx, "com.example.count", &bus.Message{Member: "Count", Payload: p})
	if err != nil { // the call consumed p either way
		log.Fatal(err)
	}
	defer reply.Close()
	fmt.Printf("%s\n", reply.Body)
	// Output: 4194304 of 4194304
}
