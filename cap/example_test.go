package cap_test

import (
	"context"
	"fmt"

	"github.com/porter-ipc/porter/cap"
)

// Greeter is an object: its methods of the form
// func(context.Context, A) (R, error) are callable.
type Greeter struct{}

// Hello greets name.
func (Greeter) Hello(ctx context.Context, name string) (string, error) {
	return "hello, " + name, nil
}

// A server exports an object and gets its first Ref; here the same
// process calls it, as any process it hands the Ref to could.
func Example() {
	srv := cap.NewServer()
	defer srv.Close()
	ref, err := srv.Export(Greeter{})
	if err != nil {
		panic(err)
	}
	defer ref.Close()
	var s string
	if err := ref.Call(context.Background(), "Hello", "world", &s); err != nil {
		panic(err)
	}
	fmt.Println(s)
	// Output: hello, world
}
