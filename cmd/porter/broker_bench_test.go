package main

import (
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/porter-ipc/porter/broker"
)

// BenchmarkManyHolders: a real porter up with 1,000 clients each holding
// 10 sockets of their own (10,000 sockets, 10,000 references). Reports the
// broker's resident memory and how long `porter ls --json` takes; one op
// is one `porter ls`.
func BenchmarkManyHolders(b *testing.B) {
	const clients, each = 1000, 10
	d := up(b, "", "--max-sockets", "-1", "--max-conns", "-1")
	rssBefore := rssKiB(b, d.cmd.Process.Pid)
	start := time.Now()
	cls := make([]*broker.Client, 0, clients)
	defer func() {
		for _, c := range cls {
			c.Close()
		}
	}()
	for i := 0; i < clients; i++ {
		c, err := broker.Dial(d.sock)
		if err != nil {
			b.Fatal(err)
		}
		cls = append(cls, c)
		for j := 0; j < each; j++ {
			g, err := c.Request(broker.Request{Proto: broker.UDP, Addr: netip.MustParseAddrPort("127.0.0.1:0"), Share: broker.ShareNone, App: "bench"})
			if err != nil {
				b.Fatalf("client %d socket %d: %v", i, j, err)
			}
			g.File.Close() // the reference stays with the connection
		}
	}
	setup := time.Since(start)
	rss := rssKiB(b, d.cmd.Process.Pid)
	var times []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		out, err := d.porterCmd(-1, -1, "ls", "--json").Output()
		if err != nil {
			b.Fatal(err)
		}
		times = append(times, time.Since(t0))
		if i == 0 && strings.Count(string(out), `"pid"`) != clients*each {
			b.Fatalf("porter ls shows %d holders, want %d", strings.Count(string(out), `"pid"`), clients*each)
		}
	}
	b.StopTimer()
	slices.Sort(times)
	b.ReportMetric(float64(rss)/1024, "rss-MiB")
	b.ReportMetric(float64(rss-rssBefore)*1024/(clients*each), "B/socket")
	b.ReportMetric(float64(times[len(times)/2].Microseconds())/1e3, "ls-p50-ms")
	b.ReportMetric(float64(clients*each)/setup.Seconds(), "setup-sockets/s")
}

func rssKiB(b *testing.B, pid int) int {
	out, err := exec.Command("grep", "VmRSS", fmt.Sprintf("/proc/%d/status", pid)).Output()
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(out))
	n, _ := strconv.Atoi(f[1])
	return n
}
