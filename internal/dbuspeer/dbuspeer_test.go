package dbuspeer

import (
	"os"
	"testing"

	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// TestEchoRoundTrip runs each peer bus, an echo service that owns a name
// on it, and a client that calls it by name with a string and then with a
// string and a pipe's write end: the reply brings back the body and the
// same pipe, which the test proves by writing to the returned fd.
func TestEchoRoundTrip(t *testing.T) {
	for _, tc := range testPeers {
		t.Run(tc.name, func(t *testing.T) {
			for _, prog := range tc.progs {
				testutil.RequireProgram(t, prog)
			}
			testutil.CheckLeaks(t)
			_, journalBefore := os.Lstat(journalPath)
			p, err := tc.start()
			if err != nil {
				t.Fatal(err)
			}
			if cpu, err := CPUTime(p.PID); err != nil || cpu < 0 {
				t.Errorf("CPUTime(%d) = %v, %v", p.PID, cpu, err)
			}
			if rss, err := RSS(p.PID); err != nil || rss <= 0 {
				t.Errorf("RSS(%d) = %d, %v", p.PID, rss, err)
			}
			echo, err := StartEcho(p.Path, "org.porter.Echo")
			if err != nil {
				p.Stop()
				t.Fatal(err)
			}
			c, err := Dial(p.Path)
			if err != nil {
				echo.Close()
				p.Stop()
				t.Fatal(err)
			}
			if c.Name == "" || c.Name == echo.Name() {
				t.Errorf("unique names: client %q, echo %q", c.Name, echo.Name())
			}
			call := &Message{Type: TypeMethodCall, Destination: "org.porter.Echo", Path: "/org/porter/Echo",
				Interface: "org.porter.Echo", Member: "Echo", Signature: "s", Body: StringBody("hello, bus")}
			r, err := c.Call(call)
			if err != nil {
				t.Fatal(err)
			}
			if s, err := r.BodyString(); err != nil || s != "hello, bus" || r.Sender != echo.Name() {
				t.Errorf("reply %q, %v from %q; want %q from %q", s, err, r.Sender, "hello, bus", echo.Name())
			}

			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			call.Signature, call.FDs = "sh", []int{testutil.FD(t, pw)}
			call.Body = append(StringBody("with fd"), 0, 0, 0, 0) // "with fd" pads to 12, then the index 0
			r, err = c.Call(call)
			pw.Close()
			if err != nil {
				t.Fatal(err)
			}
			if len(r.FDs) != 1 || r.Signature != "sh" {
				t.Fatalf("reply with fds %v, signature %q; want one fd, \"sh\"", r.FDs, r.Signature)
			}
			if _, err := unix.Write(r.FDs[0], []byte("x")); err != nil {
				t.Fatal(err)
			}
			r.Close()
			buf := make([]byte, 2)
			if n, err := pr.Read(buf); err != nil || string(buf[:n]) != "x" {
				t.Errorf("read %q, %v through the fd that came back; want \"x\"", buf[:n], err)
			}
			pr.Close()

			c.Close()
			if err := echo.Close(); err != nil {
				t.Error(err)
			}
			if err := p.Stop(); err != nil {
				t.Error(err)
			}
			if _, err := os.Stat(p.Path); err == nil {
				t.Errorf("%s left after Stop", p.Path)
			}
			if _, err := os.Lstat(journalPath); (err == nil) != (journalBefore == nil) {
				t.Errorf("%s: existed before: %v, after Stop: %v", journalPath, journalBefore == nil, err == nil)
			}
		})
	}
}
