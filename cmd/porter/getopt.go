package main

import (
	"errors"
	"flag"
	"strings"
)

// getoptArgs rewrites args the way getopt(3) reads them into the form the
// flag package parses, so that s6-style command lines work: a cluster of
// one-letter options "-1v" becomes "-1", "-v", and a letter that takes a
// value takes the rest of its word ("-c5" becomes "-c", "5") or, at the
// end of a word, the next one. Which letters take a value is read from fs
// (every flag that is not boolean). Long options ("--allow-uid 0",
// "--notify-fd=3") are left as they are, with their value. Rewriting
// stops at "--" or at the first word that is not an option, as getopt's
// does; the rest is copied unchanged. Letters fs does not know are left
// in place for fs.Parse to report.
func getoptArgs(fs *flag.FlagSet, args []string) []string {
	out := make([]string, 0, len(args)+4)
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" || len(a) < 2 || a[0] != '-' {
			return append(out, args[i:]...)
		}
		if strings.HasPrefix(a, "--") {
			out = append(out, a)
			if name, _, hasValue := strings.Cut(a[2:], "="); !hasValue && takesValue(fs, name) && i+1 < len(args) {
				i++
				out = append(out, args[i])
			}
			continue
		}
		for j := 1; j < len(a); j++ {
			letter := a[j : j+1]
			out = append(out, "-"+letter)
			if !takesValue(fs, letter) {
				continue
			}
			if j+1 < len(a) {
				out = append(out, a[j+1:])
			} else if i+1 < len(args) {
				i++
				out = append(out, args[i])
			}
			break
		}
	}
	return out
}

// takesValue reports whether fs has a flag called name that needs a value.
func takesValue(fs *flag.FlagSet, name string) bool {
	f := fs.Lookup(name)
	if f == nil {
		return false
	}
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return !ok || !b.IsBoolFlag()
}

// Exit statuses of porter ipcserver and ipcclient: s6's, so that scripts
// and supervisors written for s6-ipcserver and s6-ipcclient read them the
// same way. A program that cannot be run gives 126, or 127 when it is not
// found, as with s6-ipcclient and the shell.
const (
	exitBadUsage = 100 // the command line is wrong
	exitSysError = 111 // a system call failed: bind, connect, setuid …
)

// parseGetopt parses args into fs after getoptArgs. It returns -1 when
// the caller goes on, otherwise the status to exit with: 0 for -h/--help,
// exitBadUsage for a command line fs refuses (fs has printed why).
func parseGetopt(fs *flag.FlagSet, args []string) int {
	switch err := fs.Parse(getoptArgs(fs, args)); {
	case err == nil:
		return -1
	case errors.Is(err, flag.ErrHelp):
		return 0
	}
	return exitBadUsage
}

// usageError is a mistake in the command line, as opposed to a failure of
// the system; exitStatus tells them apart.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// exitStatus is the status to exit with after err: exitBadUsage for a
// usageError, exitSysError for anything else.
func exitStatus(err error) int {
	var u usageError
	if errors.As(err, &u) {
		return exitBadUsage
	}
	return exitSysError
}
