package main

import (
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
)

func TestGetoptArgs(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.Bool("1", false, "")
	fs.Bool("v", false, "")
	fs.Int("c", 0, "")
	fs.String("a", "", "")
	fs.String("allow-uid", "", "")
	fs.Bool("long-bool", false, "")
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{"-1v -c5 PATH prog", "-1 -v -c 5 PATH prog"},
		{"-vc5 PATH", "-v -c 5 PATH"},
		{"-c5v PATH", "-c 5v PATH"}, // the value takes the rest of the word
		{"-1c 5 PATH", "-1 -c 5 PATH"},
		{"-c -1v PATH", "-c -1v PATH"},                         // a value that looks like an option
		{"-a0660 -1 PATH", "-a 0660 -1 PATH"},                  // -a takes a value
		{"PATH -1v prog -c5", "PATH -1v prog -c5"},             // stops at the first operand
		{"-1 -- -v prog", "-1 -- -v prog"},                     // and at --
		{"--allow-uid 0 -1v PATH", "--allow-uid 0 -1 -v PATH"}, // long options keep their value
		{"--allow-uid=0 -v1 PATH", "--allow-uid=0 -v -1 PATH"},
		{"--long-bool -1v PATH", "--long-bool -1 -v PATH"},
		{"--unknown -1v PATH", "--unknown -1 -v PATH"},
		{"-1Zv PATH", "-1 -Z -v PATH"}, // unknown letters are left to Parse
		{"- prog", "- prog"},
		{"-c", "-c"}, // a missing value is left to Parse
	} {
		got := strings.Join(getoptArgs(fs, strings.Fields(c.in)), " ")
		if got != c.want {
			t.Errorf("getoptArgs(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// TestGetoptArgsParses: what getoptArgs makes, the flag package parses to
// the values getopt would give.
func TestGetoptArgsParses(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	one := fs.Bool("1", false, "")
	v := fs.Bool("v", false, "")
	c := fs.Int("c", 0, "")
	if err := fs.Parse(getoptArgs(fs, []string{"-1vc", "7", "PATH", "-v", "prog"})); err != nil {
		t.Fatal(err)
	}
	if !*one || !*v || *c != 7 || !slices.Equal(fs.Args(), []string{"PATH", "-v", "prog"}) {
		t.Fatalf("-1=%v -v=%v -c=%d args=%q", *one, *v, *c, fs.Args())
	}
}
