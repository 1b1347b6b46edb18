// Command benchtable turns `go test -bench` output into the side-by-side
// table that `make bench` prints: each benchmark's time per operation,
// operations per second, its extra metrics, and its cost relative to the
// raw one-fd round trip measured in the same run (the machine's floor).
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
