// Package bus is porter's local message bus: a master that authenticates
// endpoints, names them and introduces them on direct channels, as
// specified in docs/protocol-bus.md (protocol version 1).
//
// This first slice holds only the wire format, with no sockets: the frame
// codec (the 48-byte header, the typed fields, the body; [Decode] and
// [Rules.Decode] with every check of the protocol's "Validation order",
// [Frame.MarshalBinary]), the bodies of the control frames, the string
// syntax of names, addresses, paths and members, the protocol's error
// codes ([Code], [Error]) and the bloom filter of multicast signals
// ([SipHash24], [Bloom], [SignalBloom], [MatchBloom]). The master and the
// endpoint build on it; it stands on the standard library alone.
//
// All integers on the wire are little-endian.
package bus
