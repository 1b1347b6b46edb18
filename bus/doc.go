// Package bus is porter's local message bus, as specified in
// docs/protocol-bus.md (protocol version 1): a master that authenticates
// endpoints by their credentials, assigns addresses, keeps the name
// registry, decides by a Policy, introduces endpoints on direct channels
// (a socketpair per pair, so a call costs one hop), routes what cannot go
// direct, and reports deaths; endpoints that call, answer, signal and
// watch.
//
// The master is [Master] ([Listen], Serve, Close): one epoll loop serving
// every connection, so an idle endpoint costs a small struct and no
// goroutine. The endpoint is [Endpoint] ([Dial], Call, Send, Watch,
// RequestName). Below both lie the wire format — the frame codec
// ([Decode], [Rules.Decode] with every check of the protocol's
// "Validation order", [Frame.MarshalBinary]), the control bodies, the
// string syntax of names, paths and members, the error codes ([Code],
// [Error]) and the bloom filter of multicast signals ([SignalBloom],
// [MatchBloom]) — and the D-Bus marshalling of string arguments the
// tools use ([Strings], [ParseStrings]).
//
// The package stands on fdpass alone among porter's packages. All integers
// on the wire are little-endian.
package bus
