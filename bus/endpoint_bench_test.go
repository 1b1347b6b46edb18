package bus

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/porter-ipc/porter/internal/dbuspeer"
	"github.com/porter-ipc/porter/internal/testutil"
)

// benchEcho answers every call with its body and files.
func benchEcho(ctx context.Context, c *Call) (*Message, error) {
	return &Message{Body: c.Body, Files: c.Files}, nil
}

// benchCall measures call/reply between two endpoints of an in-process
// master, with a 16-byte body and, with fd, one fd each way.
func benchCall(b *testing.B, o Options, fd bool) {
	dbuspeer.Place(b) // the placement of every bus benchmark (see Place)
	m := busMaster(b)
	srv := dial(b, m, Options{Handler: benchEcho})
	cli := dial(b, m, o)
	dest := FormatAddress(srv.Address())
	msg := &Message{Member: "Echo", Body: make([]byte, 16)}
	if fd {
		pr, pw, err := os.Pipe()
		if err != nil {
			b.Fatal(err)
		}
		defer pr.Close()
		defer pw.Close()
		msg.Files = []*os.File{pw}
	}
	ctx := context.Background()
	r, err := cli.Call(ctx, dest, msg) // connects
	if err != nil {
		b.Fatal(err)
	}
	r.Close()
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		r, err := cli.Call(ctx, dest, msg)
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
		r.Close()
	}
	b.StopTimer()
	testutil.ReportLatency(b, lat)
}

// BenchmarkBusCall is a call/reply on a direct channel.
func BenchmarkBusCall(b *testing.B) { benchCall(b, Options{}, false) }

// BenchmarkBusCallRouted is a call/reply through the master.
func BenchmarkBusCallRouted(b *testing.B) { benchCall(b, Options{Routed: true}, false) }

// BenchmarkBusCallFD is a call/reply on a direct channel carrying one fd
// each way.
func BenchmarkBusCallFD(b *testing.B) { benchCall(b, Options{}, true) }
