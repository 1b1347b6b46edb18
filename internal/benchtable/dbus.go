package main

import (
	"fmt"
	"io"
	"strings"
)

// The D-Bus block (issue 13): the rows DBusPorterX (porter's D-Bus front
// door), DBusBrokerX and DBusDaemonX of bus/dbus_bench_test.go and
// bus/peer_bench_test.go side by side, then the goals as targets.

// dbusBuses are the column prefixes of the D-Bus table, porter's first.
var dbusBuses = []struct{ prefix, name string }{
	{"DBusPorter", "porter"},
	{"DBusBroker", "dbus-broker"},
	{"DBusDaemon", "dbus-daemon"},
}

// dbusKinds are the D-Bus rows, in the table's order: what follows the
// bus prefix in a benchmark's name.
var dbusKinds = []string{"Call", "CallFD", "CallGodbus", "CallGodbusFD", "Publish8", "Publish100",
	"Call16M", "Echo16M", "Idle", "Join"}

// dbusTargets are issue 13's goals: at least dbus-broker's throughput
// with the same clients and no more than its CPU per message (want 1);
// the others are reported.
var dbusTargets = []target{
	{"D-Bus calls/s vs dbus-broker", "DBusPorterCall", "", "DBusBrokerCall", "", 1},
	{"D-Bus bus CPU per call", "DBusPorterCall", "bus-µs/call", "DBusBrokerCall", "bus-µs/call", 1},
	{"D-Bus call p99 vs dbus-broker", "DBusPorterCall", "p99-µs", "DBusBrokerCall", "p99-µs", 0},
	{"D-Bus fd calls/s vs dbus-broker", "DBusPorterCallFD", "", "DBusBrokerCallFD", "", 1},
	{"D-Bus bus CPU per fd call", "DBusPorterCallFD", "bus-µs/call", "DBusBrokerCallFD", "bus-µs/call", 1},
	{"godbus calls/s vs dbus-broker", "DBusPorterCallGodbus", "", "DBusBrokerCallGodbus", "", 1},
	{"godbus bus CPU per call", "DBusPorterCallGodbus", "bus-µs/call", "DBusBrokerCallGodbus", "bus-µs/call", 1},
	{"godbus fd calls/s vs dbus-broker", "DBusPorterCallGodbusFD", "", "DBusBrokerCallGodbusFD", "", 1},
	{"godbus bus CPU per fd call", "DBusPorterCallGodbusFD", "bus-µs/call", "DBusBrokerCallGodbusFD", "bus-µs/call", 1},
	{"D-Bus signals/s to 8 vs broker", "DBusPorterPublish8", "", "DBusBrokerPublish8", "", 1},
	{"D-Bus CPU per delivery, 8", "DBusPorterPublish8", "bus-µs/delivery", "DBusBrokerPublish8", "bus-µs/delivery", 1},
	{"D-Bus signals/s to 100 vs broker", "DBusPorterPublish100", "", "DBusBrokerPublish100", "", 1},
	{"D-Bus CPU per delivery, 100", "DBusPorterPublish100", "bus-µs/delivery", "DBusBrokerPublish100", "bus-µs/delivery", 1},
	{"D-Bus 16 MiB calls/s vs broker", "DBusPorterCall16M", "", "DBusBrokerCall16M", "", 1},
	{"D-Bus 16 MiB bus CPU per call", "DBusPorterCall16M", "bus-µs/call", "DBusBrokerCall16M", "bus-µs/call", 1},
	{"D-Bus 16 MiB echoes/s vs broker", "DBusPorterEcho16M", "", "DBusBrokerEcho16M", "", 1},
	{"D-Bus 16 MiB echo bus CPU", "DBusPorterEcho16M", "bus-µs/call", "DBusBrokerEcho16M", "bus-µs/call", 1},
	{"memory per idle D-Bus connection", "DBusPorterIdle", "B/conn", "DBusBrokerIdle", "B/conn", 1},
	{"D-Bus bus CPU per join", "DBusPorterJoin", "bus-µs/join", "DBusBrokerJoin", "bus-µs/join", 0},
	{"native call vs D-Bus front call", "BusMasterCallDirect", "", "DBusPorterCall", "", 0},
}

// printDBus prints the D-Bus table and targets for the D-Bus rows the run
// has, if any.
func printDBus(w io.Writer, rows []row) {
	byName := map[string]row{}
	for _, r := range rows {
		byName[strings.TrimPrefix(r.name, "Benchmark")] = r
	}
	header := false
	for _, kind := range dbusKinds {
		var units []string
		seen := map[string]bool{"ops/s": true}
		have := false
		for _, bus := range dbusBuses {
			r, ok := byName[bus.prefix+kind]
			if !ok {
				continue
			}
			have = true
			for _, m := range r.extra {
				if _, u, ok := strings.Cut(m, " "); ok && !seen[u] {
					seen[u] = true
					units = append(units, u)
				}
			}
		}
		if !have {
			continue
		}
		if !header {
			fmt.Fprintf(w, "\nD-Bus (issue 13): the same D-Bus clients on each bus, this run; × broker = porter's advantage (> 1: better than dbus-broker).\n")
			fmt.Fprintf(w, "%-14s %-18s", "rows", "metric")
			for _, bus := range dbusBuses {
				fmt.Fprintf(w, " %13s", bus.name)
			}
			fmt.Fprintf(w, " %10s\n", "× broker")
			header = true
		}
		for i, unit := range append([]string{"ops/s"}, units...) {
			name := ""
			if i == 0 {
				name = kind
			}
			fmt.Fprintf(w, "%-14s %-18s", name, unit)
			var vals []float64
			var oks []bool
			for _, bus := range dbusBuses {
				v, ok := metric(byName, bus.prefix+kind, unit)
				vals, oks = append(vals, v), append(oks, ok)
				if ok {
					fmt.Fprintf(w, " %13s", number(v))
				} else {
					fmt.Fprintf(w, " %13s", "-")
				}
			}
			fmt.Fprintf(w, " %10s\n", advantage(unit, vals[0], oks[0], vals[1], oks[1]))
		}
	}
	printTargetSet(w, "D-Bus goals (issue 13)", dbusTargets, rows)
}

// metric is row name's value of unit, ops/s derived from ns/op.
func metric(byName map[string]row, name, unit string) (float64, bool) {
	r, ok := byName[name]
	if !ok {
		return 0, false
	}
	if unit == "ops/s" {
		return 1e9 / r.nsPerOp, r.nsPerOp > 0
	}
	return value([]row{r}, strings.TrimPrefix(name, "Benchmark"), unit)
}

// advantage is porter's value p over the broker's q as a factor where
// more is better for porter.
func advantage(unit string, p float64, okP bool, q float64, okQ bool) string {
	switch {
	case !okP || !okQ:
		return "-"
	case rate(unit) && q > 0:
		return fmt.Sprintf("%.2f", p/q)
	case !rate(unit) && p > 0:
		return fmt.Sprintf("%.2f", q/p)
	case !rate(unit) && q > 0:
		return "∞" // porter's cost rounds to 0
	}
	return "-"
}

// number prints v with about four significant figures.
func number(v float64) string {
	switch {
	case v >= 1000 || v == 0:
		return fmt.Sprintf("%.0f", v)
	case v >= 100:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}
