package bus

import (
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/porter-ipc/porter/internal/dbuspeer"
	"github.com/porter-ipc/porter/internal/dbuswire"
	"github.com/porter-ipc/porter/internal/testutil"
)

// dbusMsg encodes a D-Bus message for the seeds.
func dbusMsg(h dbuswire.Header, sig string, fill func(e *dbuswire.Encoder)) []byte {
	e := dbuswire.NewEncoder('l')
	if fill != nil {
		fill(e)
	}
	h.Order, h.Signature = 'l', sig
	if h.Serial == 0 {
		h.Serial = 2
	}
	return dbuswire.AppendMessage(nil, &h, e.Bytes())
}

func toDriver(member, sig string, fill func(e *dbuswire.Encoder)) []byte {
	return dbusMsg(dbuswire.Header{Type: dbuswire.TypeMethodCall, Destination: DriverName, Path: driverPath,
		Interface: DriverName, Member: member}, sig, fill)
}

// FuzzDBusFront sends each input on an authenticated D-Bus connection to a
// real master's front door (after Hello when the input's length is even,
// in place of it when odd; a third of the inputs carry a pipe fd), then
// checks that the master still answers another D-Bus client. Whatever the
// input, the master answers, or drops that one connection, and keeps
// serving; its fds are counted at the end.
func FuzzDBusFront(f *testing.F) {
	str := func(v string) func(e *dbuswire.Encoder) { return func(e *dbuswire.Encoder) { e.String(v) } }
	for _, b := range [][]byte{
		toDriver("ListNames", "", nil),
		toDriver("RequestName", "su", func(e *dbuswire.Encoder) { e.String("com.example.Fuzz"); e.Uint32(4) }),
		toDriver("ReleaseName", "s", str("com.example.Fuzz")),
		toDriver("AddMatch", "s", str("type='signal',interface='com.example.I',arg0='x',arg3path='/a/'")),
		toDriver("RemoveMatch", "s", str("type='signal',interface='com.example.I',arg0='x',arg3path='/a/'")),
		toDriver("GetConnectionCredentials", "s", str(":1.2")),
		toDriver("GetNameOwner", "s", str("com.example.Fuzz")),
		toDriver("BecomeMonitor", "asu", func(e *dbuswire.Encoder) { e.Strings([]string{"type='signal'"}); e.Uint32(0) }),
		toDriver("Hello", "", nil),
		toDriver("StartServiceByName", "su", func(e *dbuswire.Encoder) { e.String("a.b"); e.Uint32(0) }),
		dbusMsg(dbuswire.Header{Type: dbuswire.TypeSignal, Path: "/a", Interface: "com.example.I", Member: "S"}, "ss",
			func(e *dbuswire.Encoder) { e.String("x"); e.String("y") }),
		dbusMsg(dbuswire.Header{Type: dbuswire.TypeMethodCall, Destination: ":1.2", Path: "/", Member: "M"}, "h",
			func(e *dbuswire.Encoder) { e.UnixFD(0) }),
		dbusMsg(dbuswire.Header{Type: dbuswire.TypeMethodReturn, Destination: ":1.2", ReplySerial: 7}, "", nil),
		dbusMsg(dbuswire.Header{Type: dbuswire.TypeMethodCall, Destination: "com.example.Nobody", Path: "/", Member: "M",
			Flags: dbuswire.FlagNoReplyExpected | 0x80}, "", nil),
		[]byte("garbage!"),
		[]byte("l\x01\x00\x01\x00\x00\x00\x00"),
	} {
		f.Add(b)
	}
	testutil.CheckLeaks(f)
	dir := f.TempDir()
	m, err := Listen(filepath.Join(dir, "bus"), nil)
	if err != nil {
		f.Fatal(err)
	}
	sock := filepath.Join(dir, "dbus")
	if err := m.ListenDBus(sock); err != nil {
		f.Fatal(err)
	}
	m.ErrorLog = quietLog()
	served := make(chan error, 1)
	go func() { served <- m.Serve() }()
	f.Cleanup(func() {
		m.Close()
		<-served
	})
	auth := "\x00AUTH EXTERNAL " + hex.EncodeToString([]byte(strconv.Itoa(os.Geteuid()))) + "\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n"
	hello := toDriver("Hello", "", nil)
	hello[8] = 1 // serial 1
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		out := []byte(auth)
		if len(in)%2 == 0 {
			out = append(out, hello...)
		}
		out = append(out, in...)
		var oob []byte
		if len(in)%3 == 0 && len(in) > 0 {
			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer pr.Close()
			defer pw.Close()
			oob = unix.UnixRights(testutil.FD(t, pw))
		}
		c.WriteMsgUnix(out, oob, nil) // may fail once the master closed: fine
		probe, err := dbuspeer.Dial(sock)
		if err != nil {
			t.Fatalf("the master stopped answering: %v", err)
		}
		defer probe.Close()
		if _, err := probe.Call(&dbuspeer.Message{Type: dbuswire.TypeMethodCall, Destination: DriverName, Path: driverPath,
			Interface: DriverName, Member: "GetId"}); err != nil {
			t.Fatalf("the master stopped answering: %v", err)
		}
	})
}
