package porter_test

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"os/exec"

	"github.com/porter-ipc/porter"
)

// A Go HTTP server on port 80 that needs no privilege: net.Listen became
// porter.Listen. porter up must be running, and its rules must allow this
// program's user port 80.
func ExampleListen() {
	l, err := porter.Listen("tcp", ":80") // was net.Listen("tcp", ":80")
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello")
	})))
}

// A DNS-style UDP server: net.ListenPacket became porter.ListenPacket.
func ExampleListenPacket() {
	pc, err := porter.ListenPacket("udp", ":53")
	if err != nil {
		log.Fatal(err)
	}
	defer pc.Close() // gives the broker reference back
	buf := make([]byte, 512)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			log.Fatal(err)
		}
		pc.WriteTo(buf[:n], from) // echo
	}
}

// A program started by `porter run --listen web=tcp://0.0.0.0:80 -- prog`
// (or by systemd) takes its sockets over from fds 3, 4, ...
func ExampleListenersWithNames() {
	byName, err := porter.ListenersWithNames()
	if err != nil {
		log.Fatal(err)
	}
	web := byName["web"]
	if len(web) != 1 {
		log.Fatal("run me as: porter run --listen web=tcp://0.0.0.0:80 -- ", os.Args[0])
	}
	log.Fatal(http.Serve(web[0], http.FileServer(http.Dir("/srv/www"))))
}

// Sharing a socket with another instance of any program during a rolling
// restart, through a broker at a chosen control socket.
func ExampleConfig_Listen() {
	cfg := &porter.Config{
		Socket: "/run/porter/porter.sock",
		Share:  porter.ShareWithAny,
		App:    "web",
	}
	l, err := cfg.Listen("tcp", "0.0.0.0:8080")
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	fmt.Println("token prefix:", l.(*porter.Listener).Token()[:8])
}

// The two-step flow, supervisor side: prepare a socket and hand only the
// token to a child, which picks the socket up itself (see Pickup) and so
// becomes its holder.
func ExampleConfig_Prepare() {
	var cfg porter.Config
	token, err := cfg.Prepare("tcp", ":8443")
	if err != nil {
		log.Fatal(err)
	}
	child := exec.Command("./worker")
	child.Env = append(os.Environ(), "WORKER_TOKEN="+token)
	if err := child.Start(); err != nil {
		porter.Release(token) // nobody will pick it up
		log.Fatal(err)
	}
}

// The two-step flow, worker side: redeem the token from the supervisor.
func ExamplePickup() {
	f, err := porter.Pickup(os.Getenv("WORKER_TOKEN"))
	if err != nil {
		log.Fatal(err)
	}
	l, err := porter.FileListener(f)
	f.Close() // the Listener has its own copy
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	log.Fatal(http.Serve(l, nil))
}
