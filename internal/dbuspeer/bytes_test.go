package dbuspeer

import (
	"encoding/binary"
	"testing"

	"github.com/porter-ipc/porter/internal/testutil"
)

// testPeers are the buses the tests run, with the programs each needs.
var testPeers = []struct {
	name  string
	progs []string
	start func() (*Peer, error)
}{
	{"dbus-broker", []string{"systemd-socket-activate", "dbus-broker-launch", "dbus-broker"}, StartBroker},
	{"dbus-daemon", []string{"dbus-daemon"}, StartDaemon},
}

// TestSinkBytes sends byte arrays of several sizes (empty, not a multiple
// of 8, larger than the socket buffers) through each peer bus to a Sink,
// each followed by an ordinary call on the same connections, and checks
// the checksum the sink answers against one computed here: the array
// arrived whole, and ReadBytes left the stream at the next message.
func TestSinkBytes(t *testing.T) {
	for _, tc := range testPeers {
		t.Run(tc.name, func(t *testing.T) {
			for _, prog := range tc.progs {
				testutil.RequireProgram(t, prog)
			}
			testutil.CheckLeaks(t)
			p, err := tc.start()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { // after the sink's and the client's
				if err := p.Stop(); err != nil {
					t.Error(err)
				}
			})
			sink, err := StartSink(p.Path, "org.porter.Sink")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := sink.Close(); err != nil {
					t.Error(err)
				}
			})
			c, err := Dial(p.Path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			call := &Message{Type: TypeMethodCall, Destination: "org.porter.Sink", Path: "/org/porter/Sink",
				Interface: "org.porter.Sink", Member: "Sum"}
			for _, n := range []int{0, 13, 4096, 3<<20 + 5} {
				data := make([]byte, n)
				for i := range data {
					data[i] = byte(i*31 + n)
				}
				r, err := c.CallBytes(call, data)
				if err != nil {
					t.Fatalf("%d bytes: %v", n, err)
				}
				if got, err := r.BodyUint64(); err != nil || got != Checksum(data) {
					t.Errorf("%d bytes: checksum %#x, %v; want %#x", n, got, err, Checksum(data))
				}
				r.Close()
				plain := *call
				plain.Signature, plain.Body = "s", StringBody("after")
				if r, err = c.Call(&plain); err != nil {
					t.Fatalf("call after %d bytes: %v", n, err)
				}
				if r.Signature != "" || len(r.Body) != 0 {
					t.Errorf("plain call after %d bytes: reply %q %x; want an empty one", n, r.Signature, r.Body)
				}
				r.Close()
			}
		})
	}
}

// TestChecksum checks Checksum against a byte-at-a-time computation.
func TestChecksum(t *testing.T) {
	for _, n := range []int{0, 1, 7, 8, 31, 32, 33, 100} {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*7 + 3)
		}
		var want uint64
		i := 0
		for ; i+8 <= n; i += 8 {
			want += binary.LittleEndian.Uint64(b[i:])
		}
		for ; i < n; i++ {
			want += uint64(b[i])
		}
		if got := Checksum(b); got != want {
			t.Errorf("Checksum of %d bytes = %#x, want %#x", n, got, want)
		}
	}
}
