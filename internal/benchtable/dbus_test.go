package main

import (
	"io"
	"strings"
	"testing"
)

// TestDBus: the D-Bus rows of the three buses are printed side by side,
// one line per metric, with porter's advantage over dbus-broker (rates
// porter / broker, costs broker / porter), then the goals; a run without
// D-Bus rows prints nothing.
func TestDBus(t *testing.T) {
	in := `pkg: github.com/porter-ipc/porter/bus
BenchmarkDBusPorterCall-2    	  20000	     40000 ns/op	  20.0 bus-µs/call	  30.0 p50-µs	  90.0 p99-µs
BenchmarkDBusBrokerCall-2    	  20000	     50000 ns/op	  25.0 bus-µs/call	  40.0 p50-µs	  90.0 p99-µs
BenchmarkDBusDaemonCall-2    	  20000	    100000 ns/op	  50.0 bus-µs/call	  80.0 p50-µs	 200.0 p99-µs
BenchmarkDBusPorterPublish8-2	  10000	    200000 ns/op	  5.00 bus-µs/delivery	  40000 deliveries/s
BenchmarkDBusBrokerPublish8-2	  10000	    100000 ns/op	  2.50 bus-µs/delivery	  80000 deliveries/s
BenchmarkDBusPorterIdle-2    	      1	    100000 ns/op	  2000 B/conn
BenchmarkBusMasterCallDirect-2	 100000	     10000 ns/op	  0 master-µs/call	  10.0 p50-µs	  30.0 p99-µs
`
	rows, _, err := parse(strings.NewReader(in), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	printDBus(&out, rows)
	got := squash(out.String())
	for _, want := range []string{
		"Call ops/s 25000 20000 10000 1.25",
		"bus-µs/call 20.00 25.00 50.00 1.25",
		"p99-µs 90.00 90.00 200.0 1.00",
		"Publish8 ops/s 5000 10000 - 0.50",
		"deliveries/s 40000 80000 - 0.50",
		"bus-µs/delivery 5.00 2.50 - 0.50",
		"Idle ops/s 10000 - - -",
		"B/conn 2000 - - -",
		"D-Bus calls/s vs dbus-broker DBusPorterCall / DBusBrokerCall 1.25 ≥ 1 met",
		"D-Bus CPU per delivery, 8 DBusPorterPublish8 bus-µs/delivery / DBusBrokerPublish8 bus-µs/delivery 0.50 ≥ 1 MISSED",
		"native call vs D-Bus front call BusMasterCallDirect / DBusPorterCall 4.00",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in:\n%s", want, out.String())
		}
	}
	if strings.Contains(got, "CallFD") || strings.Contains(got, "memory per idle D-Bus") {
		t.Errorf("a row or target the run does not have was printed:\n%s", out.String())
	}
	out.Reset()
	printDBus(&out, rows[len(rows)-1:])
	if out.Len() != 0 {
		t.Errorf("the D-Bus block printed for a run without D-Bus rows:\n%s", out.String())
	}
}
