package ipc_test

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/porter-ipc/porter/access"
	"github.com/porter-ipc/porter/ipc"
	"golang.org/x/sys/unix"
)

// A local service in library mode: the handler sees the client's
// kernel-verified credentials; access rules (here: only our own uid)
// decide who gets that far.
func Example() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "hello.sock")

	l, err := ipc.Listen(path, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	srv := &ipc.Server{
		Rules: access.AllowIDs([]int{os.Getuid()}, nil),
		Handler: ipc.HandlerFunc(func(c *ipc.Conn) {
			name, _ := bufio.NewReader(c).ReadString('\n')
			fmt.Fprintf(c, "hello %s, uid %d\n", strings.TrimSpace(name), c.Peer().UID)
		}),
	}
	go srv.Serve(l)
	defer srv.Close()

	c, err := ipc.Dial(path)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	io.WriteString(c, "gopher\n")
	reply, _ := bufio.NewReader(c).ReadString('\n')
	fmt.Print(strings.Replace(reply, fmt.Sprint(os.Getuid()), "ME", 1))
	// Output: hello gopher, uid ME
}

// The s6 helper-daemon pattern: on request the server offers the client
// an extra, unbound channel (one end of a socketpair, passed with
// SCM_RIGHTS) and wakes it there when an event matching its pattern
// happens, while the main connection stays request/response.
func ExampleConn_OfferChannel() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "notify.sock")
	events := []string{"disk full", "user login: alice", "user login: bob"}

	l, _ := ipc.Listen(path, nil)
	srv := &ipc.Server{Handler: ipc.HandlerFunc(func(c *ipc.Conn) {
		pattern, _ := bufio.NewReader(c).ReadString('\n') // "watch <pattern>"
		pattern = strings.TrimPrefix(strings.TrimSpace(pattern), "watch ")
		ch, err := c.OfferChannel(unix.SOCK_SEQPACKET, 1)
		if err != nil {
			return
		}
		defer ch.Close()
		for _, e := range events {
			if strings.Contains(e, pattern) {
				ch.Send([]byte(e)) // one notification per packet
			}
		}
	})}
	go srv.Serve(l)
	defer srv.Close()

	c, _ := ipc.Dial(path)
	defer c.Close()
	io.WriteString(c, "watch login\n")
	ch, offer, err := c.AcceptChannel()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ch.Close()
	fmt.Println("channel", offer.Tag)
	buf := make([]byte, 256)
	for {
		m, err := ch.Recv(buf, 0)
		if err != nil { // io.EOF: the server closed the channel
			break
		}
		fmt.Println("event:", string(buf[:m.N]))
	}
	// Output:
	// channel 1
	// event: user login: alice
	// event: user login: bob
}
