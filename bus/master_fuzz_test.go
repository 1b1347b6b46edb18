package bus

import (
	"encoding/binary"
	"io"
	"log"
	"os"
	"path/filepath"
	"testing"

	"github.com/porter-ipc/porter/internal/testutil"
)

// FuzzMaster sends each input as one packet from a joined endpoint to a
// real master (source 2 in the input is replaced by the endpoint's own
// address, so requests get past the source check; a third of the inputs
// carry a pipe fd), then checks that the master still answers another
// endpoint. Whatever the input, the master answers or drops that one
// connection and keeps serving; its fds are counted at the end.
func FuzzMaster(f *testing.F) {
	self := uint64(2)
	ctl := func(typ Type, body []byte) []byte {
		return enc(&Frame{Type: typ, Serial: 5, Source: self, Destination: AddrBus, Body: body})
	}
	rules := []Rule{{Kind: RuleInterface, Value: "com.example.I"}, {Kind: RuleArg, Index: 1, Value: "x"}}
	for _, b := range [][]byte{
		ctl(TypeList, nil),
		ctl(TypeAddAddress, nil),
		ctl(TypeRemoveAddress, U64Body(2)),
		ctl(TypeRequestName, NameBody{Address: self, Flags: NameAllowReplacement, Name: "com.example.Fuzz"}.Encode()),
		ctl(TypeReleaseName, NameBody{Address: self, Name: "com.example.Fuzz"}.Encode()),
		ctl(TypeConnect, ConnectBody{Source: self, Destination: self}.Encode()),
		ctl(TypeConnect, ConnectBody{Source: self, Name: "com.example.Nobody", Flags: ConnectRouted}.Encode()),
		ctl(TypeDisconnect, U64Body(1)),
		ctl(TypeAddMatch, AddMatchBody{Cookie: 3, Bloom: MatchBloom(DefaultBloom, rules), Rules: rules}.Encode()),
		ctl(TypeRemoveMatch, U64Body(3)),
		ctl(TypeResolve, ResolveBody{Name: "com.example.Fuzz"}.Encode()),
		ctl(TypeBecomeMonitor, U32Body(0)),
		ctl(TypeBye, nil),
		enc(&Frame{Type: TypeCall, Serial: 9, Source: self, Destination: self, Fields: []Field{{FieldMember, []byte("M")}}, Body: []byte("b")}),
		enc(&Frame{Type: TypeReply, Serial: 10, ReplySerial: 9, Source: self, Destination: self}),
		enc(&Frame{Type: TypeSignal, Serial: 11, Source: self, Fields: []Field{{FieldPath, []byte("/")}, {FieldInterface, []byte("a.b")},
			{FieldMember, []byte("S")}, {FieldBloom, SignalBloom(DefaultBloom, Signal{Path: "/", Interface: "a.b", Member: "S"})}}}),
		enc(&Frame{Type: TypeCall, Serial: 12, Source: self, Fields: []Field{{FieldMember, []byte("M")}, {FieldDestName, []byte("com.example.Fuzz")}}}),
		[]byte("garbage"),
	} {
		f.Add(b)
	}
	testutil.CheckLeaks(f)
	m, err := Listen(filepath.Join(f.TempDir(), "bus"), nil)
	if err != nil {
		f.Fatal(err)
	}
	m.ErrorLog = quietLog()
	served := make(chan error, 1)
	go func() { served <- m.Serve() }()
	f.Cleanup(func() {
		m.Close()
		<-served
	})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := join(t, m.Addr(), HelloAcceptFDs, "fuzz")
		in = append([]byte(nil), in...)
		if len(in) >= 40 && le64(in[32:]) == self {
			putLE64(in[32:], r.addr)
		}
		var files []*os.File
		if len(in)%3 == 0 && len(in) > 0 {
			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer pr.Close()
			defer pw.Close()
			files = append(files, pw)
		}
		if len(in) == 0 {
			in = []byte{0} // an empty packet would be end of connection
		}
		r.c.Send(in, files...) // may fail once the master closed: fine
		probe := join(t, m.Addr(), 0, "probe")
		s := probe.req(TypeResolve, ResolveBody{Address: probe.addr}.Encode())
		if g, _ := probe.expect(TypeIdentity, s); g == nil {
			t.Fatal("the master stopped answering")
		}
		// Drain what the master sent the fuzzed endpoint, closing any fds
		// (channel ends from a CONNECT to itself).
		r.c.Close()
		probe.c.Close()
	})
}

func putLE64(b []byte, v uint64) { binary.LittleEndian.PutUint64(b, v) }

// quietLog discards the master's log lines (the fuzzer provokes many).
func quietLog() *log.Logger { return log.New(io.Discard, "", 0) }
