package bus

import "encoding/binary"

// The bus's own signals (docs/protocol-bus.md, "Signals from the bus"):
// SIGNAL frames with source 1 that only the master sends.
const (
	DBusInterface   = "org.freedesktop.DBus"  // interface of the name notices
	DBusPath        = "/org/freedesktop/DBus" // path of the name notices
	PorterInterface = "porter.Bus"            // interface of EndpointGone and Lost
	PorterPath      = "/porter/Bus"           // path of EndpointGone and Lost

	MemberNameOwnerChanged = "NameOwnerChanged" // multicast: a name changed owner
	MemberNameAcquired     = "NameAcquired"     // unicast to the new owner
	MemberNameLost         = "NameLost"         // unicast to the old owner
	MemberEndpointGone     = "EndpointGone"     // multicast, and unicast to channel peers
	MemberLost             = "Lost"             // unicast: frames were missed
)

// EndpointGone reasons.
const (
	GoneLeft     = 1 // BYE
	GoneDied     = 2 // the connection ended without BYE
	GoneExpelled = 3 // StallTimeout
	GoneRemoved  = 4 // REMOVE_ADDRESS
)

// BusSignal builds a signal of the bus: source 1, to dest (0: multicast,
// with the bloom of its properties under p), with the member's path and
// interface, the string arguments args (arg0, arg1, …) and body.
func BusSignal(p Bloom, serial, dest uint64, member string, args []string, body []byte) (*Frame, error) {
	path, iface := DBusPath, DBusInterface
	if member == MemberEndpointGone || member == MemberLost {
		path, iface = PorterPath, PorterInterface
	}
	f := &Frame{Type: TypeSignal, Serial: serial, Source: AddrBus, Destination: dest, Body: body,
		Fields: []Field{{FieldPath, []byte(path)}, {FieldInterface, []byte(iface)}, {FieldMember, []byte(member)}}}
	sig := Signal{Path: path, Interface: iface, Member: member}
	if len(args) > 0 {
		for i, a := range args {
			sig.Args = append(sig.Args, Arg{Index: uint8(i), Kind: ArgString, Value: a})
		}
		v, err := EncodeArgs(sig.Args)
		if err != nil {
			return nil, err
		}
		f.Fields = append(f.Fields, Field{FieldArgs, v})
	}
	if dest == AddrNone {
		f.Fields = append(f.Fields, Field{FieldBloom, SignalBloom(p, sig)})
	}
	return f, nil
}

// NameOwnerChanged is the multicast notice that name moved from old to
// new (0: none); arg1 and arg2 are the owners as ":1.N" or "".
func NameOwnerChanged(p Bloom, serial uint64, name string, old, new uint64) (*Frame, error) {
	body := binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, old), new)
	return BusSignal(p, serial, AddrNone, MemberNameOwnerChanged, []string{name, FormatAddress(old), FormatAddress(new)}, body)
}

// NameAcquired is the notice to owner that it now owns name.
func NameAcquired(serial uint64, name string, owner uint64) (*Frame, error) {
	return BusSignal(Bloom{}, serial, owner, MemberNameAcquired, []string{name}, U64Body(owner))
}

// NameLost is the notice to owner that it lost name.
func NameLost(serial uint64, name string, owner uint64) (*Frame, error) {
	return BusSignal(Bloom{}, serial, owner, MemberNameLost, []string{name}, U64Body(owner))
}

// EndpointGone is the notice that addr left for reason (Gone*), to dest
// (0: multicast, with the bloom under p; else a channel peer).
func EndpointGone(p Bloom, serial, dest, addr uint64, reason uint32) (*Frame, error) {
	body := binary.LittleEndian.AppendUint32(U64Body(addr), reason)
	body = append(body, 0, 0, 0, 0)
	return BusSignal(p, serial, dest, MemberEndpointGone, []string{FormatAddress(addr)}, body)
}

// Lost is the notice to dest that it missed frames: since the previous
// Lost, and in total.
func Lost(serial, dest, since, total uint64) (*Frame, error) {
	body := binary.LittleEndian.AppendUint64(U64Body(since), total)
	return BusSignal(Bloom{}, serial, dest, MemberLost, nil, body)
}

// ParseNameOwnerChanged reads the body of NameOwnerChanged: old and new
// owner (0: none).
func ParseNameOwnerChanged(b []byte) (old, new uint64, err error) {
	if len(b) < 16 {
		return 0, 0, short(TypeSignal, len(b), 16)
	}
	return le64(b), le64(b[8:]), nil
}

// ParseEndpointGone reads the body of EndpointGone: the address and the
// reason.
func ParseEndpointGone(b []byte) (addr uint64, reason uint32, err error) {
	if len(b) < 16 {
		return 0, 0, short(TypeSignal, len(b), 16)
	}
	return le64(b), le32(b[8:]), nil
}
