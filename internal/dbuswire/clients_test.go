package dbuswire

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/porter-ipc/porter/internal/testutil"
)

// updateCorpus writes what the real clients sent into the fuzz seed
// corpora: go test -run TestRealClients -update-corpus ./internal/dbuswire
var updateCorpus = flag.Bool("update-corpus", false, "write the real clients' bytes to testdata/fuzz")

// python3 is Debian's interpreter, which has python3-dbus (a python3
// earlier on PATH may be another one).
const python3 = "/usr/bin/python3"

// realClients are the D-Bus clients of Debian that the front must serve:
// each connects to addr, authenticates and sends Hello.
var realClients = []struct {
	name string
	prog string // what must be installed, for the error when it is not
	cmd  func(addr string) []string
	more bool // it goes on with a call after Hello's reply
}{
	{"busctl", "busctl (package systemd)", func(addr string) []string {
		return []string{"busctl", "--address=" + addr, "list"}
	}, true},
	{"dbus-send", "dbus-send (package dbus-bin)", func(addr string) []string {
		return []string{"dbus-send", "--bus=" + addr, "--print-reply", "--dest=org.freedesktop.DBus", "/", "org.freedesktop.DBus.ListNames"}
	}, true},
	{"gdbus", "gdbus (package libglib2.0-bin)", func(addr string) []string {
		return []string{"gdbus", "call", "--address", addr, "-d", "org.freedesktop.DBus", "-o", "/", "-m", "org.freedesktop.DBus.ListNames"}
	}, true},
	{"dbus-monitor", "dbus-monitor (package dbus-bin)", func(addr string) []string {
		return []string{"dbus-monitor", "--address", addr, "type='signal',sender='org.example.Svc',path_namespace='/org/example',arg0namespace='org.example'"}
	}, true},
	{"gdbus-monitor", "gdbus (package libglib2.0-bin)", func(addr string) []string {
		return []string{"gdbus", "monitor", "--address", addr, "--dest", "org.example.Svc"}
	}, true},
	{"busctl-monitor", "busctl (package systemd)", func(addr string) []string {
		return []string{"busctl", "--address=" + addr, "monitor", "org.example.Svc"}
	}, true},
	{"python3-dbus", "python3-dbus (package python3-dbus)", func(addr string) []string {
		return []string{python3, "-c", "import dbus, sys; dbus.bus.BusConnection(sys.argv[1])", addr}
	}, false},
}

// requireClient fails the test loudly when a client is missing.
func requireClient(t *testing.T, name, prog string) {
	t.Helper()
	if name == python3 {
		if out, err := exec.Command(python3, "-c", "import dbus").CombinedOutput(); err != nil {
			t.Fatalf("NEEDS PEER: %s is not installed (scripts/install-deps installs it): %v\n%s", prog, err, out)
		}
		return
	}
	testutil.RequireProgram(t, name)
}

// TestRealClients runs each real client against a one-connection server
// built from this package: it authenticates the client with Server.Feed,
// reads its first message with MessageLen and ParseMessage, requires a
// Hello to the bus driver, answers it with the unique name ":1.1" and
// closes. The clients then fail (the bus went away): expected.
func TestRealClients(t *testing.T) {
	testutil.RequireProgram(t, "timeout")
	for _, c := range realClients {
		t.Run(c.name, func(t *testing.T) {
			requireClient(t, strings.Fields(c.cmd("")[0])[0], c.prog)
			testutil.CheckLeaks(t)
			path := filepath.Join(t.TempDir(), "bus")
			l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			addr := "unix:path=" + path
			argv := append([]string{"10"}, c.cmd(addr)...)
			cmd := exec.Command("timeout", argv...)
			var stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = io.Discard, &stderr
			cmd.Env = append(os.Environ(), "DBUS_SESSION_BUS_ADDRESS="+addr, "DBUS_SYSTEM_BUS_ADDRESS="+addr)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// SIGTERM, which timeout passes on to the client: the monitors
			// do not exit when the bus goes away.
			stop := func() {
				cmd.Process.Signal(unix.SIGTERM)
				cmd.Wait()
			}
			auth, msgs, fds, err := serveHello(l)
			stop()
			if err != nil {
				t.Fatalf("%s: %v\nclient stderr:\n%s\nauth bytes: %q", c.name, err, stderr.Bytes(), auth)
			}
			t.Logf("%s: auth %q, fds agreed %v, %d messages", c.name, auth, fds, len(msgs))
			var rules []string
			for _, m := range msgs[1:] {
				h, body, _ := ParseMessage(m)
				t.Logf("then %s(%s)", h.Member, h.Signature)
				d := NewDecoder(h.Order, h.Signature, body)
				switch h.Member {
				case "AddMatch":
					r, _ := d.String()
					rules = append(rules, r)
				case "BecomeMonitor":
					rs, _ := d.Strings()
					d.Uint32()
					rules = append(rules, rs...)
				default:
					continue
				}
				if err := d.Done(); err != nil {
					t.Errorf("%s: %v", h.Member, err)
				}
			}
			for _, s := range rules {
				r, err := ParseRule(s)
				if err != nil {
					t.Errorf("%s's rule: %v", c.name, err)
					continue
				}
				t.Logf("rule %q → %q", s, r)
			}
			if !fds {
				t.Errorf("%s did not agree to pass fds", c.name)
			}
			// libdbus and GDBus wait for Hello's reply before the call they
			// were asked to make: it arriving shows the reply was understood.
			if c.more && len(msgs) < 2 {
				t.Errorf("%s sent no call after Hello's reply", c.name)
			}
			if *updateCorpus {
				writeSeed(t, "FuzzSASL", c.name, auth)
				for i, m := range msgs {
					writeSeed(t, "FuzzParseMessage", fmt.Sprintf("%s-%d", c.name, i), m)
				}
				for i, m := range msgs {
					if h, body, _ := ParseMessage(m); len(body) > 0 {
						seed := fmt.Sprintf("go test fuzz v1\nbool(%v)\nstring(%q)\n[]byte(%q)\n", h.Order == 'B', h.Signature, body)
						writeFile(t, "FuzzStringArgs", fmt.Sprintf("%s-%d", c.name, i), seed)
					}
				}
				for i, r := range rules {
					writeSeed(t, "FuzzParseRule", fmt.Sprintf("%s-%d", c.name, i), r)
				}
			}
		})
	}
}

// serveHello accepts one connection on l, authenticates it, reads the
// first message, which must be Hello, answers it, reads one more message
// if the client sends one before closing, and closes. It returns the bytes
// of the authentication (up to and including BEGIN) and of the messages.
func serveHello(l *net.UnixListener) (auth []byte, msgs [][]byte, fds bool, err error) {
	// A guard against a client that never connects, not a timing
	// assertion: the client itself runs under timeout 10.
	l.SetDeadline(time.Now().Add(30 * time.Second))
	conn, err := l.AcceptUnix()
	if err != nil {
		return nil, nil, false, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, nil, false, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, nil, false, err
	}
	if credErr != nil {
		return nil, nil, false, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	s := &Server{UID: cred.Uid, GUID: "6e2c3b9a0f1d4e5f8a7b6c5d4e3f2a1b", UnixFD: true}
	buf := make([]byte, 4096)
	var stream []byte
	for {
		n, err := conn.Read(buf)
		if err != nil {
			return auth, nil, false, fmt.Errorf("read during authentication: %w", err)
		}
		out, done, rest, ferr := s.Feed(buf[:n])
		if len(out) > 0 {
			if _, err := conn.Write(out); err != nil {
				return auth, nil, false, err
			}
		}
		if ferr != nil {
			return append(auth, buf[:n]...), nil, false, ferr
		}
		if done {
			auth = append(auth, buf[:n-len(rest)]...)
			stream = append(stream, rest...)
			break
		}
		auth = append(auth, buf[:n]...)
	}
	next := func() ([]byte, error) {
		for {
			if m, err := MessageLen(stream); err == nil && len(stream) >= m {
				msg := stream[:m:m]
				stream = stream[m:]
				_, _, err := ParseMessage(msg)
				return msg, err
			} else if err != nil && !errors.Is(err, ErrShort) {
				return nil, err
			}
			n, err := conn.Read(buf)
			if err != nil {
				return nil, err
			}
			stream = append(stream, buf[:n]...)
		}
	}
	msg, err := next()
	if err != nil {
		return auth, nil, false, fmt.Errorf("first message: %w", err)
	}
	msgs = append(msgs, msg)
	h, _, _ := ParseMessage(msg)
	if h.Type != TypeMethodCall || h.Member != "Hello" || h.Destination != "org.freedesktop.DBus" ||
		h.Path != "/org/freedesktop/DBus" || h.Interface != "org.freedesktop.DBus" {
		return auth, msgs, false, fmt.Errorf("first message is not Hello: %+v", h)
	}
	e := NewEncoder(h.Order)
	e.String(":1.1")
	r := Header{Order: h.Order, Type: TypeMethodReturn, Flags: FlagNoReplyExpected, Serial: 1,
		ReplySerial: h.Serial, Destination: ":1.1", Sender: "org.freedesktop.DBus", Signature: "s"}
	if _, err := conn.Write(AppendMessage(nil, &r, e.Bytes())); err != nil {
		return auth, msgs, false, err
	}
	msg, err = next()
	switch {
	case err == nil:
		msgs = append(msgs, msg)
	case !errors.Is(err, io.EOF) && !errors.Is(err, unix.ECONNRESET):
		return auth, msgs, false, fmt.Errorf("second message: %w", err)
	}
	return auth, msgs, s.UnixFDAgreed(), nil
}

// writeSeed writes b ([]byte or string) as a fuzz seed named after the
// client.
func writeSeed[T []byte | string](t *testing.T, target, name string, b T) {
	data := fmt.Sprintf("go test fuzz v1\n%T(%q)\n", b, b)
	writeFile(t, target, name, strings.Replace(data, "[]uint8(", "[]byte(", 1))
}

// writeFile writes a fuzz seed file for target.
func writeFile(t *testing.T, target, name, data string) {
	dir := filepath.Join("testdata", "fuzz", target)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "client-"+name), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}
