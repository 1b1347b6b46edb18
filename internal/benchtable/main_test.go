package main

import (
	"io"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	in := `goos: linux
pkg: github.com/porter-ipc/porter/fdpass
BenchmarkRawFDRoundTrip-2   	  100000	     20000 ns/op
BenchmarkFDPassRoundTrip-2  	  100000	     30000 ns/op	  12.5 p99-µs	  48 B/op	  2 allocs/op
--- FAIL: BenchmarkBroken
FAIL	github.com/porter-ipc/porter/fdpass	1.0s
`
	rows, failed, err := parse(strings.NewReader(in), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(failed) != 2 || failed[0] != "--- FAIL: BenchmarkBroken" {
		t.Errorf("failed = %q, want the two FAIL lines", failed)
	}
	if len(rows) != 2 || rows[0].name != "BenchmarkRawFDRoundTrip" || rows[1].nsPerOp != 30000 || rows[1].pkg != "fdpass" {
		t.Fatalf("rows = %+v", rows)
	}
	if len(rows[1].extra) != 1 || rows[1].extra[0] != "12.5 p99-µs" {
		t.Fatalf("extra metrics = %q", rows[1].extra)
	}
	var out strings.Builder
	printTable(&out, rows)
	if !strings.Contains(out.String(), "1.50") {
		t.Fatalf("no ratio 1.50 in:\n%s", out.String())
	}
}

// TestTargets: the bus targets are printed as factors of the peer's cost
// over porter's, judged against what the issue wants, and only for the
// rows the run has.
func TestTargets(t *testing.T) {
	in := `pkg: github.com/porter-ipc/porter/bus
BenchmarkDBusBrokerCall-2   	  20000	     50000 ns/op	  25.0 bus-µs/call	  40.0 p50-µs	  90.0 p99-µs
BenchmarkBusMasterCallDirect-2    	 100000	     10000 ns/op	  0 master-µs/call	  10.0 p50-µs	  30.0 p99-µs
BenchmarkBusMasterCallRouted-2    	 100000	     20000 ns/op	  10.0 master-µs/call
BenchmarkRawSeqpacketRoundTrip-2	 100000	     8000 ns/op	  7.0 p50-µs	  20.0 p99-µs
BenchmarkDBusBrokerCall16M-2     	     30	  12000000 ns/op	  1398.10 MB/s	  5000 bus-µs/call	  12000 cpu-µs/call	  11000 p50-µs	  20000 p99-µs
BenchmarkBusMasterCall16M-2      	     30	   2000000 ns/op	  8388.61 MB/s	  2400 cpu-µs/call	  0 master-µs/call	  2500 p50-µs	  3000 p99-µs
BenchmarkBusPublish8-2   	  10000	     10000 ns/op	  200000 deliveries/s	  1.0 master-µs/delivery
BenchmarkDBusBrokerPublish8-2   	  10000	     20000 ns/op	  2.5 bus-µs/delivery	  100000 deliveries/s
`
	rows, _, err := parse(strings.NewReader(in), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	printTargets(&out, rows)
	for _, want := range []string{
		"unicast calls/s vs dbus-broker        BusMasterCallDirect / DBusBrokerCall                    5.00  ≥ 5  met",
		"call p99 vs dbus-broker              BusMasterCallDirect p99-µs / DBusBrokerCall p99-µs       3.00  ≥ 5  MISSED",
		"unicast calls/s vs raw round trip     BusMasterCallDirect / RawSeqpacketRoundTrip             0.80  ≥ 0.4  met",
		"bus CPU per routed call              BusMasterCallRouted master-µs/call / DBusBrokerCall bus-µs/call      2.50  ≥ 5  MISSED",
		"bus CPU per direct call BusMasterCallDirect master-µs/call / DBusBrokerCall bus-µs/call ∞ ≥ 5 met",
		"16 MiB calls/s vs dbus-broker BusMasterCall16M / DBusBrokerCall16M 6.00 ≥ 5 met",
		"16 MiB call p50 vs dbus-broker BusMasterCall16M p50-µs / DBusBrokerCall16M p50-µs 4.40 ≥ 5 MISSED",
		"16 MiB CPU per call vs dbus-broker BusMasterCall16M cpu-µs/call / DBusBrokerCall16M cpu-µs/call 5.00 ≥ 5 met",
		// A rate's factor (deliveries/s) is porter's over the peer's.
		"deliveries/s to 8 vs dbus-broker BusPublish8 deliveries/s / DBusBrokerPublish8 deliveries/s 2.00 ≥ 4 MISSED",
		"bus CPU per delivery, 8 BusPublish8 master-µs/delivery / DBusBrokerPublish8 bus-µs/delivery 2.50 ≥ 5 MISSED",
	} {
		if !strings.Contains(squash(out.String()), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("no %q in:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "memory per idle endpoint") {
		t.Errorf("a target without its rows was printed:\n%s", out.String())
	}
	out.Reset()
	printTargets(&out, rows[:1])
	if out.Len() != 0 {
		t.Errorf("targets printed for a run without porter's rows:\n%s", out.String())
	}
}

// squash folds every run of spaces of each line into one.
func squash(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.Join(strings.Fields(l), " ")
	}
	return strings.Join(lines, "\n")
}

// TestScaleTargets: the scale rows' factors, and the growth rows as a
// bus's Other cost over its Empty cost.
func TestScaleTargets(t *testing.T) {
	in := `pkg: github.com/porter-ipc/porter/bus
BenchmarkBusScaleOther-2          	 3000	  400000 ns/op	  200.0 acquire-p50-µs	  90.0 gone-p50-µs	  700.0 gone-p99-µs	  120.0 master-µs/op
BenchmarkBusScaleEmpty-2          	 3000	  400000 ns/op	  200.0 acquire-p50-µs	  90.0 gone-p50-µs	  700.0 gone-p99-µs	  100.0 master-µs/op
BenchmarkDBusBrokerScaleOther-2   	 3000	  400000 ns/op	  200.0 acquire-p50-µs	  60.0 bus-µs/op	  90.0 gone-p50-µs	  700.0 gone-p99-µs
BenchmarkDBusDaemonScaleOther-2   	 3000	  400000 ns/op	  200.0 acquire-p50-µs	  1800.0 bus-µs/op	  90.0 gone-p50-µs	  700.0 gone-p99-µs
BenchmarkDBusDaemonScaleEmpty-2   	 3000	  400000 ns/op	  200.0 acquire-p50-µs	  300.0 bus-µs/op	  90.0 gone-p50-µs	  700.0 gone-p99-µs
`
	out := targetsOf(t, in)
	for _, want := range []string{
		"scale CPU/op, 1,000 others BusScaleOther master-µs/op / DBusBrokerScaleOther bus-µs/op 0.50",
		"scale CPU/op vs daemon, others BusScaleOther master-µs/op / DBusDaemonScaleOther bus-µs/op 15.00",
		"scale growth porter: Other/Empty BusScaleEmpty master-µs/op / BusScaleOther master-µs/op 1.20",
		"scale growth daemon: Other/Empty DBusDaemonScaleEmpty bus-µs/op / DBusDaemonScaleOther bus-µs/op 6.00",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}
	if strings.Contains(out, "growth broker") || strings.Contains(out, "watching") {
		t.Errorf("a target without its rows was printed:\n%s", out)
	}
}

// targetsOf is the targets printed for the benchmark output in, squashed.
func targetsOf(t *testing.T, in string) string {
	t.Helper()
	rows, _, err := parse(strings.NewReader(in), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	printTargets(&out, rows)
	return squash(out.String())
}
