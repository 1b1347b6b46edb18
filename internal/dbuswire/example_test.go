package dbuswire_test

import (
	"fmt"

	"github.com/porter-ipc/porter/internal/dbuswire"
)

// A connection's first bytes: libdbus authenticates, asks for fd passing
// and sends BEGIN and its Hello in one write.
func ExampleServer_Feed() {
	s := &dbuswire.Server{UID: 1000, GUID: "0123456789abcdef0123456789abcdef", UnixFD: true}
	out, done, rest, err := s.Feed([]byte("\x00AUTH EXTERNAL 31303030\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\nl\x01\x00\x01"))
	fmt.Printf("%q %v %q %v\n", out, done, rest, err)
	// Output: "OK 0123456789abcdef0123456789abcdef\r\nAGREE_UNIX_FD\r\n" true "l\x01\x00\x01" <nil>
}

func ExampleParseRule() {
	r, err := dbuswire.ParseRule("eavesdrop=true,type=signal,arg0namespace=org.example")
	if err != nil {
		panic(err)
	}
	fmt.Println(r)
	h := &dbuswire.Header{Type: dbuswire.TypeSignal, Path: "/", Interface: "org.example.I", Member: "Changed"}
	fmt.Println(r.Match(h, []string{":1.4"}, []dbuswire.Arg{{Index: 0, Kind: 's', Value: "org.example.Name"}}))
	// Output:
	// type='signal',arg0namespace='org.example',eavesdrop='true'
	// true
}

// The bus stamps the sender on a message it routes and passes the body
// through undecoded.
func ExampleParseMessage() {
	h := dbuswire.Header{Order: 'l', Type: dbuswire.TypeMethodCall, Serial: 5, Path: "/x",
		Interface: "com.example.I", Member: "Foo", Destination: "com.example.Svc", Signature: "s"}
	e := dbuswire.NewEncoder('l')
	e.String("hi")
	msg := dbuswire.AppendMessage(nil, &h, e.Bytes())

	n, _ := dbuswire.MessageLen(msg[:16])
	got, body, err := dbuswire.ParseMessage(msg[:n])
	if err != nil {
		panic(err)
	}
	got.Sender = ":1.7"
	routed := dbuswire.AppendMessage(nil, &got, body)
	again, body, _ := dbuswire.ParseMessage(routed)
	arg, _ := dbuswire.NewDecoder(again.Order, again.Signature, body).String()
	fmt.Println(again.Sender, again.Member, arg)
	// Output: :1.7 Foo hi
}
