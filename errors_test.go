package porter

import (
	"errors"
	"net"
	"path/filepath"
	"testing"

	"github.com/porter-ipc/porter/broker"
	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// TestErrors: every error of the client API is a *net.OpError naming the
// operation, as net.Listen's are, and a refusal from the broker keeps its
// *broker.Error, code and errno reachable through it.
func TestErrors(t *testing.T) {
	testutil.CheckLeaks(t)
	b := startBroker(t, broker.Config{})
	cfg := &Config{Socket: b.Path}
	held := loopAddr(t)
	l, err := (&Config{Socket: b.Path, Share: ShareWithNobody}).Listen("tcp", held)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	noBroker := &Config{Socket: filepath.Join(t.TempDir(), "none.sock")}
	badShare := &Config{Socket: b.Path, Share: 7}
	unknown := broker.Token{1, 2, 3}.String()

	for _, tc := range []struct {
		name  string
		err   error
		op    string
		net   string
		addr  string        // the address in the *net.OpError, "" for none
		code  *broker.Error // nil: not a refusal of the broker's
		errno error
	}{
		{name: "listen bad address", op: "listen", net: "tcp", err: func() error { _, err := cfg.Listen("tcp", "no-port"); return err }()},
		{name: "listen udp network", op: "listen", net: "udp", err: func() error { _, err := cfg.Listen("udp", ":8080"); return err }()},
		{name: "listen denied", op: "listen", net: "tcp", addr: "127.0.0.1:1", code: broker.ErrDenied, errno: unix.EACCES,
			err: func() error { _, err := cfg.Listen("tcp", "127.0.0.1:1"); return err }()},
		{name: "listen conflict", op: "listen", net: "tcp", addr: held, code: broker.ErrConflict, errno: unix.EADDRINUSE,
			err: func() error { _, err := cfg.Listen("tcp", held); return err }()},
		{name: "listen no broker", op: "listen", net: "tcp", addr: "127.0.0.1:8080", errno: unix.ENOENT,
			err: func() error { _, err := noBroker.Listen("tcp", "127.0.0.1:8080"); return err }()},
		{name: "listen bad share", op: "listen", net: "tcp", addr: "127.0.0.1:8080",
			err: func() error { _, err := badShare.Listen("tcp", "127.0.0.1:8080"); return err }()},
		{name: "listenpacket denied", op: "listen", net: "udp", addr: "127.0.0.1:1", code: broker.ErrDenied, errno: unix.EACCES,
			err: func() error { _, err := cfg.ListenPacket("udp", "127.0.0.1:1"); return err }()},
		{name: "listenpacket bad address", op: "listen", net: "udp4", err: func() error { _, err := cfg.ListenPacket("udp4", "[::1]:53"); return err }()},
		{name: "prepare denied", op: "prepare", net: "udp", addr: "127.0.0.1:1", code: broker.ErrDenied, errno: unix.EACCES,
			err: func() error { _, err := cfg.Prepare("udp", "127.0.0.1:1"); return err }()},
		{name: "prepare bad network", op: "prepare", net: "unix", err: func() error { _, err := cfg.Prepare("unix", "/x"); return err }()},
		{name: "pickup bad token", op: "pickup", err: func() error { _, err := cfg.Pickup("nonsense"); return err }()},
		{name: "pickup unknown token", op: "pickup", code: broker.ErrNoToken, errno: unix.ENOENT,
			err: func() error { _, err := cfg.Pickup(unknown); return err }()},
		{name: "release bad token", op: "release", err: cfg.Release("nonsense")},
		{name: "release unknown token", op: "release", code: broker.ErrNoToken, errno: unix.ENOENT, err: cfg.Release(unknown)},
		{name: "release no broker", op: "release", errno: unix.ENOENT, err: noBroker.Release(unknown)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var oe *net.OpError
			if !errors.As(tc.err, &oe) {
				t.Fatalf("%v (%T) is not a *net.OpError", tc.err, tc.err)
			}
			if tc.err != error(oe) {
				t.Errorf("the *net.OpError is not the error itself but wrapped: %v", tc.err)
			}
			if oe.Op != tc.op || oe.Net != tc.net {
				t.Errorf("Op %q Net %q, want %q %q (%v)", oe.Op, oe.Net, tc.op, tc.net, tc.err)
			}
			addr := ""
			if oe.Addr != nil {
				addr = oe.Addr.String()
			}
			if addr != tc.addr {
				t.Errorf("Addr %q, want %q (%v)", addr, tc.addr, tc.err)
			}
			var be *broker.Error
			if got := errors.As(tc.err, &be); got != (tc.code != nil) {
				t.Errorf("errors.As(*broker.Error) = %v, want %v (%v)", got, tc.code != nil, tc.err)
			}
			if tc.code != nil && !errors.Is(tc.err, tc.code) {
				t.Errorf("errors.Is(%v, %v) = false", tc.err, tc.code)
			}
			if tc.errno != nil && !errors.Is(tc.err, tc.errno) {
				t.Errorf("errors.Is(%v, %v) = false", tc.err, tc.errno)
			}
		})
	}
}
