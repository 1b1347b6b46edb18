package main

import (
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/porter-ipc/porter/broker"
)

func init() {
	commands["ls"] = command{"list the broker's sockets, references and holders", lsMain}
	commands["release"] = command{"give back a socket reference by token", releaseMain}
}

const lsUsage = `usage: porter ls [--json] [--socket PATH] [--timeout DURATION]

Lists every socket the broker holds: protocol and address, references
(held and pending), linger time left, and one line per reference with the
holder's pid and uid, share mode, application and the first 8 hex digits of
its token (tokens are never printed whole). With --json, one JSON object.
A broker that does not accept or answer within --timeout (a stopped
porter up, say) is an error, not a wait without end.

Options:
`

// lsJSON is the --json form of a listing.
type lsJSON struct {
	CreatorGone bool           `json:"creator_gone"`
	Sockets     []lsJSONSocket `json:"sockets"`
}

type lsJSONSocket struct {
	Proto   string         `json:"proto"`
	Address string         `json:"address"`
	Refs    int            `json:"refs"`
	LingerS float64        `json:"linger_s,omitempty"`
	Holders []lsJSONHolder `json:"holders"`
}

type lsJSONHolder struct {
	PID      int     `json:"pid"`
	UID      int     `json:"uid"`
	GID      int     `json:"gid"`
	State    string  `json:"state"`
	Share    string  `json:"share"`
	App      string  `json:"app"`
	Token    string  `json:"token_prefix"`
	ExpiresS float64 `json:"expires_s,omitempty"`
}

func lsMain(args []string) int {
	fs := flag.NewFlagSet("ls", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, lsUsage); fs.PrintDefaults() }
	asJSON := fs.Bool("json", false, "print JSON")
	sock := fs.String("socket", "", "the broker's control socket `PATH` (default $PORTER_SOCKET, else porter up's default)")
	timeout := fs.Duration("timeout", defaultTimeout, timeoutUsage)
	if err := fs.Parse(args); err != nil {
		return exitUsage(err)
	}
	if *sock == "" {
		*sock = broker.DefaultSocket()
	}
	cl, _, err := dialBlocking(*sock, *timeout)
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter ls: %v\n", err)
		return 1
	}
	defer cl.Close()
	l, err := cl.List()
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter ls: %v\n", explainWait(err, *sock, *timeout))
		return 1
	}
	if *asJSON {
		out := lsJSON{CreatorGone: l.CreatorGone, Sockets: []lsJSONSocket{}}
		for _, s := range l.Sockets {
			js := lsJSONSocket{Proto: s.Proto.String(), Address: s.Addr.String(), Refs: s.Refs,
				LingerS: float64(s.Linger) / 1000, Holders: []lsJSONHolder{}}
			for _, h := range s.Holders {
				js.Holders = append(js.Holders, lsJSONHolder{PID: h.PID, UID: h.UID, GID: h.GID,
					State: h.State.String(), Share: h.Share.String(), App: h.App,
					Token: hex.EncodeToString(h.TokenPrefix[:]), ExpiresS: float64(h.Expires) / 1000})
			}
			out.Sockets = append(out.Sockets, js)
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return 1
		}
		return 0
	}
	if l.CreatorGone {
		fmt.Println("warning: the socket creator has exited; no new sockets can be made until porter up restarts")
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SOCKET\tREFS\tLINGER\tSTATE\tPID\tUID\tSHARE\tAPP\tTOKEN")
	for _, s := range l.Sockets {
		linger := "-"
		if s.Linger > 0 {
			linger = (time.Duration(s.Linger) * time.Millisecond).String()
		}
		sock := fmt.Sprintf("%s://%s", s.Proto, s.Addr)
		if len(s.Holders) == 0 {
			fmt.Fprintf(tw, "%s\t%d\t%s\t-\t-\t-\t-\t-\t-\n", sock, s.Refs, linger)
		}
		for i, h := range s.Holders {
			if i > 0 {
				sock, linger = "", ""
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%d\t%s\t%s\t%s…\n", sock, s.Refs, linger, h.State, h.PID, h.UID, h.Share, h.App, hex.EncodeToString(h.TokenPrefix[:]))
		}
	}
	tw.Flush()
	return 0
}

const releaseUsage = `usage: porter release [--socket PATH] [--timeout DURATION] TOKEN...

Gives back the broker references that TOKENs (from porter.Prepare or a
client's Grant) name, such as prepared tokens nobody picked up. Holders
usually need not do this: the broker releases a holder's references when
its connection closes, at exit or crash.

A TOKEN is 32 hex digits (128 random bits). The 8-digit prefix that
porter ls shows is refused: a token is a secret (whoever knows a prepared
token may pick its socket up), so the listing, which everyone may read,
shows only enough to tell references apart, and a prefix may match more
than one token. A token may be released by the connection holding it, by
a process of the uid it belongs to, or by root. A broker that does not
accept or answer within --timeout is an error.

Options:
`

func releaseMain(args []string) int {
	fs := flag.NewFlagSet("release", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, releaseUsage); fs.PrintDefaults() }
	sock := fs.String("socket", "", "the broker's control socket `PATH` (default $PORTER_SOCKET, else porter up's default)")
	timeout := fs.Duration("timeout", defaultTimeout, timeoutUsage)
	if err := fs.Parse(args); err != nil {
		return exitUsage(err)
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	if *sock == "" {
		*sock = broker.DefaultSocket()
	}
	cl, _, err := dialBlocking(*sock, *timeout)
	if err != nil {
		fmt.Fprintf(os.Stderr, "porter release: %v\n", err)
		return 1
	}
	defer cl.Close()
	status := 0
	for _, a := range fs.Args() {
		t, err := broker.ParseToken(a)
		if err != nil && len(a) == 8 {
			err = fmt.Errorf("%w (porter ls shows only a token's first 8 digits; release needs the whole token, see --help)", err)
		}
		if err == nil {
			err = explainWait(cl.Release(t), *sock, *timeout)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "porter release: %v\n", err)
			status = 1
		}
	}
	return status
}
