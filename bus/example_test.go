package bus_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/porter-ipc/porter/bus"
)

// A master at a temporary path, an echo service that owns a name, and a
// call to it by that name.
func Example() {
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
	echo := func(ctx context.Context, c *bus.Call) (*bus.Message, error) {
		return &bus.Message{Body: c.Body}, nil
	}
	srv, err := bus.DialOptions(ctx, m.Addr(), bus.Options{Handler: echo})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	if _, err := srv.RequestName(ctx, "com.example.echo", 0); err != nil {
		log.Fatal(err)
	}

	cli, err := bus.Dial(m.Addr())
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	reply, err := cli.Call(ctx, "com.example.echo", &bus.Message{Member: "Echo", Body: []byte("hello")})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", reply.Body)
	// Output: hello
}
