package main

import (
	"io"
	"net"
	"path/filepath"
	"testing"

	"github.com/porter-ipc/porter/internal/testutil"
)

// BenchmarkIPCServerSpawn: connections served per second in spawn mode,
// porter ipcserver against s6-ipcserver, the same PROG (true) and the
// same client loop (connect, read to end of stream, close). One op is one
// connection, so ops/s is connections per second.
func BenchmarkIPCServerSpawn(b *testing.B) {
	for _, srv := range []string{"porter", "s6"} {
		b.Run(srv, func(b *testing.B) {
			dir := b.TempDir()
			sock := filepath.Join(dir, "bench.sock")
			var argv []string
			if srv == "porter" {
				argv = []string{porterBin(), "ipcserver", "-1", "-q", "-c", "100", "-C", "100", sock, "--", "true"}
			} else {
				argv = []string{testutil.RequireProgram(b, "s6-ipcserver"), "-1", "-q", "-c", "100", "-C", "100", sock, "true"}
			}
			serveIPC(b, argv...)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c, err := net.Dial("unix", sock)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, c)
				c.Close()
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "conns/s")
		})
	}
}
