//go:build creatortest

// The creatortest build (made only by probe_test.go) tries, after the
// lockdown and instead of serving, the call that $PORTER_CREATOR_PROBE
// names from internal/lockdown/forbidden, or "report" to print what the
// lockdown applied. The shipped creator has none of this.
package main

import (
	"os"
	"strconv"

	"github.com/porter-ipc/porter/internal/lockdown"
	"github.com/porter-ipc/porter/internal/lockdown/forbidden"
)

func init() { probe = runProbe }

func runProbe(r lockdown.Report) int {
	name := os.Getenv("PORTER_CREATOR_PROBE")
	if name == "" {
		return serve()
	}
	if name == "report" {
		os.Stderr.WriteString("nnp=" + strconv.FormatBool(r.NoNewPrivs) + " bounding=" + strconv.FormatBool(r.Bounding) +
			" landlock=" + strconv.Itoa(r.Landlock) + " seccomp=" + strconv.FormatBool(r.Seccomp) + "\n")
		return 0
	}
	for _, c := range forbidden.Calls {
		if c.Name == name {
			err := c.Try()
			msg := "nil"
			if err != nil {
				msg = err.Error()
			}
			os.Stderr.WriteString(name + " went through the lockdown: " + msg + "\n")
			return 99
		}
	}
	os.Stderr.WriteString("no probe " + name + "\n")
	return 100
}
