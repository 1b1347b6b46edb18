// Command benchtable turns `go test -bench` output into the side-by-side
// table that `make bench` prints: each benchmark's time per operation,
// operations per second, its extra metrics, and its cost relative to the
// raw one-fd round trip measured in the same run (the machine's floor),
// and then the bus targets (issues 10, 11 and 13): porter's bus rows
// against the peer buses' (dbus-broker, dbus-daemon) and the raw floors
// of the same run.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// baseline is the benchmark every row is compared with.
const baseline = "BenchmarkRawFDRoundTrip"

type row struct {
	pkg, name string
	nsPerOp   float64
	extra     []string // other metrics, as "value unit"
}

func main() {
	rows, failed, err := parse(os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
	if len(rows) == 0 {
		fmt.Fprintln(os.Stderr, "benchtable: no benchmark results in the input")
		os.Exit(1)
	}
	printTable(os.Stdout, rows)
	printTargets(os.Stdout, rows)
	printDBus(os.Stdout, rows)
	if len(failed) > 0 {
		// The pipe into benchtable hides go test's exit status.
		fmt.Fprintf(os.Stderr, "benchtable: failed (see above): %s\n", strings.Join(failed, "; "))
		os.Exit(1)
	}
}

// parse reads benchmark lines, echoing everything to echo so that a
// failure's output is not lost. failed lists go test's FAIL lines.
func parse(r io.Reader, echo io.Writer) (rows []row, failed []string, err error) {
	pkg := ""
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(echo, line)
		if strings.HasPrefix(line, "FAIL") || strings.HasPrefix(line, "--- FAIL") {
			failed = append(failed, strings.TrimSpace(line))
		}
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "pkg:" {
			// The path inside the module (cmd/porter, not porter, which
			// is the module root's name too).
			pkg = strings.TrimPrefix(strings.TrimPrefix(f[1], "github.com/porter-ipc/porter"), "/")
			if pkg == "" {
				pkg = "porter"
			}
			continue
		}
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || f[3] != "ns/op" {
			continue
		}
		ns, err := strconv.ParseFloat(f[2], 64)
		if err != nil {
			continue
		}
		name := f[0]
		if i := strings.LastIndex(name, "-"); i > 0 {
			name = name[:i] // drop the GOMAXPROCS suffix
		}
		rw := row{pkg: pkg, name: name, nsPerOp: ns}
		for i := 4; i+1 < len(f); i += 2 {
			if f[i+1] == "B/op" || f[i+1] == "allocs/op" {
				continue
			}
			rw.extra = append(rw.extra, f[i]+" "+f[i+1])
		}
		rows = append(rows, rw)
	}
	return rows, failed, sc.Err()
}

func printTable(w io.Writer, rows []row) {
	base := 0.0
	for _, r := range rows {
		if r.name == baseline {
			base = r.nsPerOp
		}
	}
	fmt.Fprintf(w, "\n%-10s %-44s %12s %12s %9s  %s\n", "package", "benchmark", "µs/op", "ops/s", "× raw", "other")
	fmt.Fprintln(w, strings.Repeat("-", 110))
	for _, r := range rows {
		ratio := "-"
		if base > 0 {
			ratio = fmt.Sprintf("%.2f", r.nsPerOp/base)
		}
		fmt.Fprintf(w, "%-10s %-44s %12.2f %12.0f %9s  %s\n", r.pkg, strings.TrimPrefix(r.name, "Benchmark"),
			r.nsPerOp/1e3, 1e9/r.nsPerOp, ratio, strings.Join(r.extra, ", "))
	}
	if base > 0 {
		fmt.Fprintf(w, "\n× raw: time per op divided by %s (%.2f µs, %.0f round trips/s) of this run.\n", baseline, base/1e3, 1e9/base)
	}
}

// target is one of the bus's targets: porter's row is better than the
// peer row by factor (the peer's cost over porter's) of at least want; a
// want of 0 only reports the factor. A metric of "" is ns/op.
type target struct {
	what               string
	porter, porterUnit string
	peer, peerUnit     string
	want               float64
}

var targets = []target{
	{"unicast calls/s vs dbus-broker", "BusMasterCallDirect", "", "DBusBrokerCall", "", 5},
	{"call p50 vs dbus-broker", "BusMasterCallDirect", "p50-µs", "DBusBrokerCall", "p50-µs", 5},
	{"call p99 vs dbus-broker", "BusMasterCallDirect", "p99-µs", "DBusBrokerCall", "p99-µs", 5},
	{"unicast calls/s vs raw round trip", "BusMasterCallDirect", "", "RawSeqpacketRoundTrip", "", 0.4},
	{"call p50 vs raw round trip", "BusMasterCallDirect", "p50-µs", "RawSeqpacketRoundTrip", "p50-µs", 0.4},
	{"call p99 vs raw round trip", "BusMasterCallDirect", "p99-µs", "RawSeqpacketRoundTrip", "p99-µs", 0.4},
	{"fd calls/s vs dbus-broker's", "BusMasterCallFD", "", "DBusBrokerCallFD", "", 5},
	{"routed calls/s vs dbus-broker", "BusMasterCallRouted", "", "DBusBrokerCall", "", 0},
	// Issue 11: 16 MiB calls (bus/big_bench_test.go); cpu-µs/call is
	// every process of the call, the figure a shared CPU does not blur.
	{"16 MiB calls/s vs dbus-broker", "BusMasterCall16M", "", "DBusBrokerCall16M", "", 5},
	{"16 MiB call p50 vs dbus-broker", "BusMasterCall16M", "p50-µs", "DBusBrokerCall16M", "p50-µs", 5},
	{"16 MiB CPU per call vs dbus-broker", "BusMasterCall16M", "cpu-µs/call", "DBusBrokerCall16M", "cpu-µs/call", 5},
	{"16 MiB in place vs dbus-broker", "BusMasterCall16MInPlace", "cpu-µs/call", "DBusBrokerCall16M", "cpu-µs/call", 0},
	{"16 MiB Write vs dbus-broker", "BusMasterCall16MWrite", "cpu-µs/call", "DBusBrokerCall16M", "cpu-µs/call", 0},
	{"16 MiB calls/s vs dbus-daemon", "BusMasterCall16M", "", "DBusDaemonCall16M", "", 0},
	{"bus CPU per direct call", "BusMasterCallDirect", "master-µs/call", "DBusBrokerCall", "bus-µs/call", 5},
	{"bus CPU per routed call", "BusMasterCallRouted", "master-µs/call", "DBusBrokerCall", "bus-µs/call", 5},
	{"memory per idle endpoint", "BusMasterIdle", "B/endpoint", "DBusBrokerIdle", "B/conn", 1},
	{"joins/s vs dbus-broker", "BusJoin", "", "DBusBrokerJoin", "", 0},
	// Issue 11, 10,000 endpoints: one join, name take and death per op
	// (bus/scale_bench_test.go). The growth rows divide a bus's cost with
	// 10,000 endpoints and 1,000 watchers of other names by its cost on
	// an empty bus: 1 is "does not grow".
	{"scale CPU/op, 1,000 watching", "BusScaleWatched", "master-µs/op", "DBusBrokerScaleWatched", "bus-µs/op", 0},
	{"scale CPU/op vs daemon, watching", "BusScaleWatched", "master-µs/op", "DBusDaemonScaleWatched", "bus-µs/op", 0},
	{"scale death p50, 1,000 watching", "BusScaleWatched", "gone-p50-µs", "DBusBrokerScaleWatched", "gone-p50-µs", 0},
	{"scale CPU/op, 1,000 others", "BusScaleOther", "master-µs/op", "DBusBrokerScaleOther", "bus-µs/op", 0},
	{"scale CPU/op vs daemon, others", "BusScaleOther", "master-µs/op", "DBusDaemonScaleOther", "bus-µs/op", 0},
	{"scale growth porter: Other/Empty", "BusScaleEmpty", "master-µs/op", "BusScaleOther", "master-µs/op", 0},
	{"scale growth broker: Other/Empty", "DBusBrokerScaleEmpty", "bus-µs/op", "DBusBrokerScaleOther", "bus-µs/op", 0},
	{"scale growth daemon: Other/Empty", "DBusDaemonScaleEmpty", "bus-µs/op", "DBusDaemonScaleOther", "bus-µs/op", 0},
	// Multicast (issue 11). deliveries/s is a rate: its factor is
	// porter's over the peer's.
	{"deliveries/s to 8 vs dbus-broker", "BusPublish8", "deliveries/s", "DBusBrokerPublish8", "deliveries/s", 4},
	{"deliveries/s to 100 vs dbus-broker", "BusPublish100", "deliveries/s", "DBusBrokerPublish100", "deliveries/s", 0},
	{"deliveries/s to 1000 vs dbus-broker", "BusPublish1000", "deliveries/s", "DBusBrokerPublish1000", "deliveries/s", 0},
	{"deliveries/s 8 of 1000 vs dbus-broker", "BusPublish1000Match8", "deliveries/s", "DBusBrokerPublish1000Match8", "deliveries/s", 0},
	{"deliveries/s to 8 vs dbus-daemon", "BusPublish8", "deliveries/s", "DBusDaemonPublish8", "deliveries/s", 0},
	{"bus CPU per delivery, 8", "BusPublish8", "master-µs/delivery", "DBusBrokerPublish8", "bus-µs/delivery", 5},
	{"bus CPU per delivery, 100", "BusPublish100", "master-µs/delivery", "DBusBrokerPublish100", "bus-µs/delivery", 5},
	{"bus CPU per delivery, 1000", "BusPublish1000", "master-µs/delivery", "DBusBrokerPublish1000", "bus-µs/delivery", 5},
	{"bus CPU per delivery, 8 of 1000", "BusPublish1000Match8", "master-µs/delivery", "DBusBrokerPublish1000Match8", "bus-µs/delivery", 5},
	{"curve: CPU/delivery 8 of 1000 vs 8", "BusPublish1000Match8", "master-µs/delivery", "BusPublish8", "master-µs/delivery", 0},
	{"curve: CPU/delivery 1000 vs 8", "BusPublish1000", "master-µs/delivery", "BusPublish8", "master-µs/delivery", 0},
	{"floor: deliveries/s to 8 vs raw fanout", "BusPublish8", "deliveries/s", "RawFanout8", "deliveries/s", 0},
	{"floor: dbus-broker's vs raw fanout", "DBusBrokerPublish8", "deliveries/s", "RawFanout8", "deliveries/s", 0},
	{"floor: deliveries/s to 8 vs raw relay", "BusPublish8", "deliveries/s", "RawRelay8", "deliveries/s", 0},
	{"floor: CPU/delivery vs raw relay's", "BusPublish8", "master-µs/delivery", "RawRelay8", "relay-µs/delivery", 0},
}

// rate reports whether unit is a rate (higher is better), whose factor
// is porter's value over the peer's, not the peer's cost over porter's.
func rate(unit string) bool { return strings.HasSuffix(unit, "/s") }

// value returns the row named name's metric unit ("" for ns/op).
func value(rows []row, name, unit string) (float64, bool) {
	for _, r := range rows {
		if strings.TrimPrefix(r.name, "Benchmark") != name {
			continue
		}
		if unit == "" {
			return r.nsPerOp, true
		}
		for _, m := range r.extra {
			if v, u, ok := strings.Cut(m, " "); ok && u == unit {
				f, err := strconv.ParseFloat(v, 64)
				return f, err == nil
			}
		}
	}
	return 0, false
}

// printTargets prints the targets whose rows the run has, if any.
func printTargets(w io.Writer, rows []row) {
	printTargetSet(w, "Bus targets (issues 10, 11, 13)", targets, rows)
}

// printTargetSet prints the targets of ts whose rows the run has, under
// a header naming them as title, if any.
func printTargetSet(w io.Writer, title string, ts []target, rows []row) {
	header := false
	for _, t := range ts {
		p, ok1 := value(rows, t.porter, t.porterUnit)
		q, ok2 := value(rows, t.peer, t.peerUnit)
		if !ok1 || !ok2 {
			continue
		}
		if !header {
			fmt.Fprintf(w, "\n%s: porter's row against the peer's of this run; factor = peer's cost / porter's (for a rate: porter's / peer's).\n", title)
			fmt.Fprintf(w, "%-34s %-64s %7s  %s\n", "target", "rows", "factor", "want")
			header = true
		}
		// A porter cost of 0 (no master CPU tick over a run of direct
		// calls) is an infinite factor.
		if rate(t.porterUnit) {
			p, q = q, p
		}
		factor, verdict := "∞", ""
		if p > 0 {
			factor = fmt.Sprintf("%.2f", q/p)
		}
		if t.want > 0 {
			verdict = fmt.Sprintf("≥ %g", t.want)
			if p == 0 || q/p >= t.want {
				verdict += "  met"
			} else {
				verdict += "  MISSED"
			}
		}
		rowsDesc := t.porter + " / " + t.peer
		if t.porterUnit != "" {
			rowsDesc = t.porter + " " + t.porterUnit + " / " + t.peer + " " + t.peerUnit
		}
		fmt.Fprintf(w, "%-34s %-64s %7s  %s\n", t.what, rowsDesc, factor, verdict)
	}
}
