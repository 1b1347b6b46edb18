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
