package dbuspeer

import (
	"fmt"
	"sync"

	"github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"
)

// The godbus side of the benchmarks: the same calls as Conn and Echo
// make, by a client and a service written with github.com/godbus/dbus,
// the D-Bus library Go programs use, whose codec decodes and re-encodes
// every message (the cost a real Go client and service add to a call).

// GodbusDial connects a godbus client to the bus at path: authenticated,
// fds agreed, past Hello.
func GodbusDial(path string) (*dbus.Conn, error) {
	c, err := dbus.Connect("unix:path=" + path)
	if err != nil {
		return nil, fmt.Errorf("dbuspeer: godbus: dial %s: %w", path, err)
	}
	return c, nil
}

// GodbusEcho is an echo service written with godbus: it owns a name and
// exports, on one object path, an interface with the methods Echo(s) → s
// and EchoFD(s, h) → (s, h), answering with its arguments.
type GodbusEcho struct {
	c *dbus.Conn

	mu   sync.Mutex
	held []dbus.UnixFD // fds received and answered, closed at the next call
}

// godbusEchoMethods are the exported methods of a GodbusEcho.
type godbusEchoMethods struct{ e *GodbusEcho }

// Echo answers its argument.
func (m godbusEchoMethods) Echo(s string) (string, *dbus.Error) { return s, nil }

// EchoFD answers its arguments: the fd goes back in the reply, which
// godbus writes after EchoFD returns, so the service closes it at its
// next call (one call at a time: the benchmarks' way) or at Close.
func (m godbusEchoMethods) EchoFD(s string, fd dbus.UnixFD) (string, dbus.UnixFD, *dbus.Error) {
	m.e.mu.Lock()
	for _, f := range m.e.held {
		unix.Close(int(f))
	}
	m.e.held = append(m.e.held[:0], fd)
	m.e.mu.Unlock()
	return s, fd, nil
}

// StartGodbusEcho connects a godbus service to the bus at path, exports
// the echo methods as interface iface on object path objPath and takes
// name.
func StartGodbusEcho(path, name, objPath, iface string) (*GodbusEcho, error) {
	c, err := GodbusDial(path)
	if err != nil {
		return nil, err
	}
	e := &GodbusEcho{c: c}
	if err := c.Export(godbusEchoMethods{e}, dbus.ObjectPath(objPath), iface); err != nil {
		c.Close()
		return nil, fmt.Errorf("dbuspeer: godbus: export: %w", err)
	}
	r, err := c.RequestName(name, dbus.NameFlagDoNotQueue)
	if err != nil || r != dbus.RequestNameReplyPrimaryOwner {
		c.Close()
		return nil, fmt.Errorf("dbuspeer: godbus: RequestName %s: answer %d, %v", name, r, err)
	}
	return e, nil
}

// Close closes the service's connection and the fds it still holds.
func (e *GodbusEcho) Close() error {
	err := e.c.Close()
	e.mu.Lock()
	for _, f := range e.held {
		unix.Close(int(f))
	}
	e.held = nil
	e.mu.Unlock()
	return err
}
