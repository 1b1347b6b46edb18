package bus

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/porter-ipc/porter/internal/dbuswire"
	"github.com/porter-ipc/porter/internal/testutil"
)

// These tests run real D-Bus clients from Debian (busctl, dbus-send,
// gdbus, python3-dbus) against the master's D-Bus front door
// (docs/dbus.md), next to native endpoints.

// dbusMaster runs a master with a D-Bus front door; it returns the master
// and the D-Bus address.
func dbusMaster(t testing.TB) (*Master, string) {
	t.Helper()
	m := frontMaster(t, nil)
	return m, m.DBusAddr()
}

// frontMaster serves a bus with a D-Bus front door in a directory every
// user may enter, with set (if any) applied before Serve, until the test
// ends; then both sockets must be gone.
func frontMaster(t testing.TB, set func(*Master)) *Master {
	t.Helper()
	dir := testutil.SharedDir(t)
	m, err := Listen(filepath.Join(dir, "bus"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.ListenDBus(filepath.Join(dir, "dbus")); err != nil {
		m.Close()
		t.Fatal(err)
	}
	if set != nil {
		set(m)
	}
	t.Cleanup(func() { // runs after serveUntilCleanup's Close
		if _, err := os.Lstat(filepath.Join(dir, "dbus")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the D-Bus socket is still there after Close (%v)", err)
		}
	})
	serveUntilCleanup(t, m)
	return m
}

// run runs a client program under a bound (libdbus and sd-bus wait 25 s
// for an answer that never comes) and returns its output.
func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	bin := testutil.RequireProgram(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String() + errb.String(), err
	}
	return out.String(), nil
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := run(t, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// mirror is a native handler that answers every call with its own
// signature, body and fds.
func mirror(ctx context.Context, c *Call) (*Message, error) {
	return &Message{Signature: c.Signature, Body: c.Body, Files: c.Files}, nil
}

func TestDBusClients(t *testing.T) {
	testutil.CheckLeaks(t)
	m, addr := dbusMaster(t)
	echo := dial(t, m, Options{Handler: mirror})
	if _, err := echo.RequestName(ctxT(t), "com.example.echo", 0); err != nil {
		t.Fatal(err)
	}

	out := mustRun(t, "busctl", "--address="+addr, "list", "--no-pager")
	for _, want := range []string{"org.freedesktop.DBus", "com.example.echo", FormatAddress(echo.Address())} {
		if !strings.Contains(out, want) {
			t.Errorf("busctl list has no %s:\n%s", want, out)
		}
	}
	// A native endpoint answers D-Bus callers (the example).
	if out := mustRun(t, "busctl", "--address="+addr, "call", "com.example.echo", "/x", "com.example.I", "Foo", "s", "hi"); out != "s \"hi\"\n" {
		t.Errorf("busctl call: %q, want s \"hi\"", out)
	}
	if out := mustRun(t, "gdbus", "call", "--address", addr, "-d", "com.example.echo", "-o", "/x", "-m", "com.example.I.Foo", "hi", "there"); out != "('hi', 'there')\n" {
		t.Errorf("gdbus call: %q", out)
	}
	out = mustRun(t, "dbus-send", "--bus="+addr, "--print-reply", "--dest=com.example.echo", "/x", "com.example.I.Foo", "string:hi", "uint32:7")
	if !strings.Contains(out, `string "hi"`) || !strings.Contains(out, "uint32 7") || !strings.Contains(out, "sender="+FormatAddress(echo.Address())) {
		t.Errorf("dbus-send: %s", out)
	}
	if out := mustRun(t, "gdbus", "call", "--address", addr, "-d", DriverName, "-o", "/org/freedesktop/DBus", "-m", "org.freedesktop.DBus.GetNameOwner", "com.example.echo"); out != "('"+FormatAddress(echo.Address())+"',)\n" {
		t.Errorf("GetNameOwner: %q", out)
	}

	// Errors for names nobody owns.
	out, err := run(t, "dbus-send", "--bus="+addr, "--print-reply", "--dest=com.example.nobody", "/x", "com.example.I.Foo")
	if err == nil || !strings.Contains(out, "org.freedesktop.DBus.Error.ServiceUnknown") {
		t.Errorf("call to an unowned name: %v %s", err, out)
	}
	out, err = run(t, "dbus-send", "--bus="+addr, "--print-reply", "--dest=org.freedesktop.DBus", "/", "org.freedesktop.DBus.GetNameOwner", "string:com.example.nobody")
	if err == nil || !strings.Contains(out, "org.freedesktop.DBus.Error.NameHasNoOwner") {
		t.Errorf("GetNameOwner of an unowned name: %v %s", err, out)
	}
	out, err = run(t, "dbus-send", "--bus="+addr, "--print-reply", "--dest=org.freedesktop.DBus", "/", "org.freedesktop.DBus.NoSuchMethod")
	if err == nil || !strings.Contains(out, "org.freedesktop.DBus.Error.UnknownMethod") {
		t.Errorf("unknown driver method: %v %s", err, out)
	}
	// The native side sees the D-Bus clients come and go, and the master
	// is still whole.
	if _, err := echo.List(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

// dbusPython is Debian's python3 with python3-dbus (the one stock client
// here that sends fds).
func dbusPython(t *testing.T) string {
	t.Helper()
	const py = "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import dbus").Run(); err != nil {
		t.Fatalf("this test needs %s with python3-dbus (scripts/install-deps): %v", py, err)
	}
	return py
}

func TestDBusFDsAndNames(t *testing.T) {
	testutil.CheckLeaks(t)
	m, addr := dbusMaster(t)
	echo := dial(t, m, Options{Handler: mirror})
	if _, err := echo.RequestName(ctxT(t), "com.example.echo", 0); err != nil {
		t.Fatal(err)
	}
	py := dbusPython(t)
	// A D-Bus client passes an fd through a native endpoint and back;
	// then it queues for a name the native endpoint owns, and gets it
	// when the native endpoint releases it.
	script := `
import os, sys, dbus
bus = dbus.bus.BusConnection(sys.argv[1])
r, w = os.pipe()
os.write(w, b"through porter")
os.close(w)
obj = bus.get_object("com.example.echo", "/x", introspect=False)
fd = obj.Foo(dbus.types.UnixFd(r), dbus_interface="com.example.I")
os.close(r)
g = fd.take()
print(os.read(g, 100).decode())
os.close(g)
print(bus.request_name("com.example.echo", 0))
sys.stdout.flush()
sys.stdin.readline()
print(bus.get_name_owner("com.example.echo") == bus.get_unique_name())
`
	cmd := exec.Command(py, "-c", script, addr)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	lines := make(chan string, 8)
	go func() {
		b, _ := io.ReadAll(stdout)
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			lines <- l
		}
		close(lines)
	}()
	// The lines come once the script ends; it ends after the release.
	testutil.WaitFor(t, "the D-Bus client to queue for com.example.echo", func() bool {
		ids, err := echo.List(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			for _, q := range id.Queued {
				if q == "com.example.echo" {
					return true
				}
			}
		}
		return false
	})
	if _, err := echo.ReleaseName(ctxT(t), "com.example.echo"); err != nil {
		t.Fatal(err)
	}
	stdin.Write([]byte("\n"))
	var got []string
	for l := range lines {
		got = append(got, l)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("python3-dbus client: %v (%q)", err, got)
	}
	want := []string{"through porter", "2", "True"} // 2: DBUS_REQUEST_NAME_REPLY_IN_QUEUE
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("python3-dbus client printed %q, want %q", got, want)
	}
}

// TestDBusNativeCallsDBus: a D-Bus service's name is callable from a
// native endpoint.
func TestDBusNativeCallsDBus(t *testing.T) {
	testutil.CheckLeaks(t)
	m, addr := dbusMaster(t)
	bin := testutil.RequireProgram(t, "dbus-test-tool")
	svc := exec.Command(bin, "echo", "--name=com.example.dbusecho")
	svc.Env = append(os.Environ(), "DBUS_SESSION_BUS_ADDRESS="+addr)
	svc.Stderr = os.Stderr
	if err := svc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Process.Kill(); svc.Wait() })
	cli := dial(t, m, Options{})
	testutil.WaitFor(t, "dbus-test-tool to own its name", func() bool {
		_, err := cli.Resolve(ctxT(t), "com.example.dbusecho")
		return err == nil
	})
	sig, body := Strings("hello", "from native") // a D-Bus body, with its signature
	reply, err := cli.Call(ctxT(t), "com.example.dbusecho", &Message{Path: "/", Interface: "com.example.I", Member: "Anything", Signature: sig, Body: body})
	if err != nil {
		t.Fatal(err)
	}
	if reply.Signature != "" || len(reply.Body) != 0 { // dbus-test-tool echo answers with an empty reply
		t.Errorf("reply %q %x, want an empty one", reply.Signature, reply.Body)
	}
	reply.Close()
	// When the D-Bus service dies, a native watcher hears of it.
	w, err := cli.Watch(ctxT(t), AddrBus, Rule{Kind: RuleMember, Value: "NameOwnerChanged"}, Rule{Kind: RuleArg, Index: 0, Value: "com.example.dbusecho"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	svc.Process.Kill()
	select {
	case n := <-w.C:
		if n.Member != "NameOwnerChanged" {
			t.Errorf("notice %s", n.Member)
		}
	case <-ctxT(t).Done():
		t.Fatal("no NameOwnerChanged after the D-Bus service died")
	}
}

// TestDBusAuth: the identity is SO_PEERCRED's; a claimed other uid is
// rejected; a bad message closes that connection only.
func TestDBusAuth(t *testing.T) {
	testutil.CheckLeaks(t)
	_, addr := dbusMaster(t)
	path := strings.TrimPrefix(addr, "unix:path=")
	dialAuth := func(lines string) (net.Conn, string) {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte("\x00" + lines)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		return c, string(buf[:n])
	}
	other := "31323334" // "1234"
	if os.Getuid() == 1234 {
		other = "31323335"
	}
	c, got := dialAuth("AUTH EXTERNAL " + other + "\r\n")
	if !strings.HasPrefix(got, "REJECTED") {
		t.Errorf("a forged uid got %q, want REJECTED", got)
	}
	c.Close()
	c, got = dialAuth("AUTH\r\n")
	if got != "REJECTED EXTERNAL\r\n" {
		t.Errorf("bare AUTH got %q", got)
	}
	c.Close()

	// Authenticated, then garbage instead of Hello: closed, nothing else.
	c, got = dialAuth("AUTH EXTERNAL\r\nDATA\r\n")
	defer c.Close()
	for !strings.Contains(got, "OK ") {
		if !strings.HasPrefix(got, "DATA") {
			t.Fatalf("sd-bus dialect got %q", got)
		}
		buf := make([]byte, 256)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		got += string(buf[:n])
	}
	c.Write([]byte("BEGIN\r\n"))
	c.Write(bytes.Repeat([]byte{'x'}, 64))
	if _, err := io.ReadAll(c); err != nil {
		t.Errorf("the master did not close a connection that sent garbage: %v", err)
	}
	c.Close()
	// A real client still gets through.
	if out := mustRun(t, "busctl", "--address="+addr, "call", DriverName, "/", DriverName, "GetId"); !strings.HasPrefix(out, "s ") {
		t.Errorf("GetId after the attacks: %q", out)
	}
}

// TestDBusHeaderFields: a D-Bus message from a native endpoint carries
// what the doc's mapping says.
func TestDBusMapping(t *testing.T) {
	f := &Frame{Type: TypeCall, Serial: 7, Source: 5, Destination: 9, Body: []byte("raw")}
	f.SetField(FieldMember, []byte("M"))
	b, err := dbusEncode(f)
	if err != nil {
		t.Fatal(err)
	}
	h, body, err := dbuswire.ParseMessage(b)
	if err != nil {
		t.Fatal(err)
	}
	if h.Path != "/" || h.Sender != ":1.5" || h.Destination != ":1.9" || h.Signature != "ay" || h.Serial != 7 {
		t.Errorf("header %+v", h)
	}
	d := dbuswire.NewDecoder(h.Order, h.Signature, body)
	if v, err := d.ByteArray(); err != nil || string(v) != "raw" {
		t.Errorf("body %q %v", v, err)
	}
	f.Serial = 1 << 32
	if _, err := dbusEncode(f); CodeOf(err) != CodeInvalid {
		t.Errorf("a serial ≥ 2³² to a D-Bus peer: %v", err)
	}
}

// TestDBusAsNobody: a D-Bus client as nobody is who the kernel says, and
// the default policy judges it as it judges a native endpoint.
func TestDBusAsNobody(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CheckLeaks(t)
	m, addr := dbusMaster(t)
	echo := dial(t, m, Options{Handler: mirror})
	if _, err := echo.RequestName(ctxT(t), "com.example.echo", 0); err != nil {
		t.Fatal(err)
	}
	uid, gid := testutil.Nobody(t)
	asNobody := func(args ...string) (string, error) {
		bin := testutil.RequireProgram(t, "dbus-send")
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, append([]string{"--bus=" + addr, "--print-reply"}, args...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := asNobody("--dest=org.freedesktop.DBus", "/", "org.freedesktop.DBus.ListNames")
	if err != nil || !strings.Contains(out, "com.example.echo") {
		t.Fatalf("ListNames as nobody: %v\n%s", err, out)
	}
	// The default policy: nobody may not call root's service, nor own a
	// name of the bus's.
	out, err = asNobody("--dest=com.example.echo", "/x", "com.example.I.Foo", "string:hi")
	if err == nil || !strings.Contains(out, "org.freedesktop.DBus.Error.AccessDenied") {
		t.Errorf("nobody calling root's service: %v\n%s", err, out)
	}
	out, err = asNobody("--dest=org.freedesktop.DBus", "/", "org.freedesktop.DBus.RequestName", "string:porter.Mine", "uint32:0")
	if err == nil || !strings.Contains(out, "org.freedesktop.DBus.Error.AccessDenied") {
		t.Errorf("nobody owning porter.Mine: %v\n%s", err, out)
	}
	// Its identity is SO_PEERCRED's: the native side sees a D-Bus client
	// as nobody with nobody's uid.
	w, err := echo.Watch(ctxT(t), AddrBus, Rule{Kind: RuleMember, Value: "NameOwnerChanged"}, Rule{Kind: RuleArg, Index: 0, Value: "com.example.nobodys"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	script := `import dbus, sys
b = dbus.bus.BusConnection(sys.argv[1])
print(b.request_name("com.example.nobodys", 4)); sys.stdout.flush(); sys.stdin.readline()`
	py := dbusPython(t)
	cmd := exec.Command(py, "-c", script, addr)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	stdin, _ := cmd.StdinPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	select {
	case n := <-w.C:
		id, err := echo.Resolve(ctxT(t), "com.example.nobodys")
		if err != nil {
			t.Fatal(err)
		}
		if int(id.UID) != uid || n.Member != "NameOwnerChanged" {
			t.Errorf("the owner of com.example.nobodys has uid %d, want %d", id.UID, uid)
		}
	case <-ctxT(t).Done():
		t.Fatal("no NameOwnerChanged for the name nobody took")
	}
}

// TestDBusAnnouncedSize: a header announcing a huge message costs the
// master what was really sent, not the announced size.
func TestDBusAnnouncedSize(t *testing.T) {
	testutil.CheckLeaks(t)
	_, addr := dbusMaster(t)
	path := strings.TrimPrefix(addr, "unix:path=")
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var conns []net.Conn
	for range 4 {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		// A signal whose body is announced as 120 MiB; 4 KiB of it sent.
		h := dbuswire.Header{Order: 'l', Type: dbuswire.TypeSignal, Serial: 2, Path: "/a", Interface: "a.b", Member: "M", Signature: "ay"}
		msg := dbuswire.AppendMessage(nil, &h, make([]byte, 4096))
		binary.LittleEndian.PutUint32(msg[4:], 120<<20)
		auth := "\x00AUTH EXTERNAL " + hex.EncodeToString([]byte(strconv.Itoa(os.Geteuid()))) + "\r\nBEGIN\r\n"
		hello := toDriver("Hello", "", nil)
		c.Write(append(append([]byte(auth), hello...), msg...))
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// The master handled them all once it answers a later client; then
	// each sends 4 KiB more, which the master reads into the message.
	for round := range 2 {
		if out := mustRun(t, "busctl", "--address="+addr, "call", DriverName, "/", DriverName, "GetId"); !strings.HasPrefix(out, "s ") {
			t.Fatalf("GetId: %q", out)
		}
		if round == 0 {
			for _, c := range conns {
				c.Write(make([]byte, 4096))
			}
		}
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 64<<20 {
		t.Errorf("4 connections announcing 120 MiB each grew the heap by %d MiB", grew>>20)
	}
}
