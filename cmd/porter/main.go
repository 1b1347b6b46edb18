// Command porter is porter's one command-line tool: the broker daemon and
// its clients (up, run, ls, release), local services (ipcserver,
// ipcclient), and more. Each subcommand lives in a file of its own and
// registers itself in commands from an init function.
package main

import (
	"fmt"
	"os"
	"sort"
	"strings"
)

// command is one subcommand of porter.
type command struct {
	summary string                  // one line for `porter help`
	run     func(args []string) int // args exclude the subcommand name; returns the exit status
}

// commands is filled by the init functions of the subcommands' files.
var commands = map[string]command{}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: porter COMMAND [options] [args]\n\nporter hands sockets and file descriptors between processes, so that each\nprogram runs with the least privilege it needs.\n\nCommands:\n")
	for _, n := range sortedNames() {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(os.Stderr, "\nRun 'porter COMMAND --help' for a command's options.\n")
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	name := os.Args[1]
	switch name {
	case "help", "-h", "--help", "-help":
		if len(os.Args) > 2 {
			if c, ok := commands[os.Args[2]]; ok {
				os.Exit(c.run([]string{"--help"}))
			}
		}
		usage()
		os.Exit(0)
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "porter: unknown command %q (commands: %s)\n", name, strings.Join(sortedNames(), ", "))
		os.Exit(2)
	}
	os.Exit(c.run(os.Args[2:]))
}

func sortedNames() []string {
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
