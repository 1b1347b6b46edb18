package bus

import (
	"encoding/binary"
)

// Bodies of the requests after joining (docs/protocol-bus.md, "Names" to
// "Looking up and listing"), under the rules stated in bodies.go.

// REQUEST_NAME flags, D-Bus's values.
const (
	NameAllowReplacement uint32 = 1 << 0
	NameReplaceExisting  uint32 = 1 << 1
	NameDoNotQueue       uint32 = 1 << 2
)

// REQUEST_NAME's DONE values (D-Bus's numbers).
const (
	NamePrimaryOwner = 1
	NameInQueue      = 2
	NameExists       = 3
	NameAlreadyOwner = 4
)

// RELEASE_NAME's DONE values.
const (
	NameReleased    = 1
	NameNonExistent = 2
	NameNotOwner    = 3
)

// NameBody is the body of REQUEST_NAME and RELEASE_NAME (flags 0).
type NameBody struct {
	Address uint64 // one of the endpoint's addresses
	Flags   uint32 // NameAllowReplacement, NameReplaceExisting, NameDoNotQueue; 0 to release
	Name    string // a well-known name
}

// Encode builds the body.
func (n NameBody) Encode() []byte {
	b := binary.LittleEndian.AppendUint64(nil, n.Address)
	b = binary.LittleEndian.AppendUint32(b, n.Flags)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(n.Name)))
	b = append(b, 0, 0)
	return append(b, n.Name...)
}

// ParseName reads a REQUEST_NAME (t = TypeRequestName) or RELEASE_NAME
// body: flags known (0 for RELEASE_NAME), the name's syntax checked. A
// reserved name passes here: refusing it is the master's (DENIED).
func ParseName(t Type, b []byte) (NameBody, error) {
	if len(b) < 16 {
		return NameBody{}, short(t, len(b), 16)
	}
	nb := NameBody{Address: le64(b), Flags: le32(b[8:])}
	n := int(le16(b[12:]))
	allowed := NameAllowReplacement | NameReplaceExisting | NameDoNotQueue
	if t == TypeReleaseName {
		allowed = 0
	}
	if nb.Flags&^allowed != 0 || le16(b[14:]) != 0 {
		return NameBody{}, errorf(opBody, CodeMalformed, "%v: flags %#x or reserved bytes set", t, nb.Flags)
	}
	if len(b) < 16+n {
		return NameBody{}, short(t, len(b), 16+n)
	}
	nb.Name = string(b[16 : 16+n])
	if err := CheckName(nb.Name); err != nil {
		return NameBody{}, errorf(opBody, CodeInvalid, "%v: %v", t, err)
	}
	return nb, nil
}

// CONNECT flags.
const ConnectRouted uint32 = 1 << 0 // the caller wants the routed path

// ConnectBody is CONNECT's body: exactly one of Destination and Name.
type ConnectBody struct {
	Source      uint64 // one of the endpoint's addresses
	Destination uint64 // 0 to go by Name
	Flags       uint32 // ConnectRouted
	Name        string // the destination's name, "" with an address
}

// Encode builds the body.
func (c ConnectBody) Encode() []byte {
	b := binary.LittleEndian.AppendUint64(nil, c.Source)
	b = binary.LittleEndian.AppendUint64(b, c.Destination)
	b = binary.LittleEndian.AppendUint32(b, c.Flags)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(c.Name)))
	b = append(b, 0, 0)
	return append(b, c.Name...)
}

// ParseConnect reads CONNECT's body.
func ParseConnect(b []byte) (ConnectBody, error) {
	if len(b) < 24 {
		return ConnectBody{}, short(TypeConnect, len(b), 24)
	}
	c := ConnectBody{Source: le64(b), Destination: le64(b[8:]), Flags: le32(b[16:])}
	n := int(le16(b[20:]))
	if c.Flags&^ConnectRouted != 0 || le16(b[22:]) != 0 {
		return ConnectBody{}, errorf(opBody, CodeMalformed, "CONNECT: flags %#x or reserved bytes set", c.Flags)
	}
	if len(b) < 24+n {
		return ConnectBody{}, short(TypeConnect, len(b), 24+n)
	}
	c.Name = string(b[24 : 24+n])
	switch {
	case (c.Destination == 0) == (n == 0):
		return ConnectBody{}, errorf(opBody, CodeInvalid, "CONNECT: give exactly one of address and name")
	case c.Destination > MaxAddress || c.Destination == AddrBus || c.Source < 2 || c.Source > MaxAddress:
		return ConnectBody{}, errorf(opBody, CodeInvalid, "CONNECT: source %d, destination %d", c.Source, c.Destination)
	}
	if n > 0 {
		if err := CheckName(c.Name); err != nil {
			return ConnectBody{}, errorf(opBody, CodeInvalid, "CONNECT: %v", err)
		}
	}
	return c, nil
}

// INTRODUCE modes, roles and routed reasons.
const (
	ModeDirect = 1 // one fd attached: the channel end
	ModeRouted = 2 // no fd: talk on the master connection

	RoleInitiator = 1 // you asked
	RoleAcceptor  = 2 // the peer asked

	PeerAcceptsFDs   = 1 << 0
	PeerAcceptsMemfd = 1 << 1

	RoutedNone      = 0
	RoutedNoDirect  = 1 // the peer refuses channels
	RoutedAsked     = 2 // you asked
	RoutedMonitor   = 3 // a monitor is attached
	RoutedNoBudget  = 4 // the channel budget is used up
	maxRoutedReason = 4
)

// IntroduceBody is INTRODUCE's body: a channel (or the routed path) to a
// peer, with the peer's verified identity as of now.
type IntroduceBody struct {
	Channel       uint64   // nonzero in DIRECT mode, 0 in ROUTED
	Local, Peer   uint64   // your address this is for; the peer's address
	PID, UID, GID uint32   // the peer's, as the master verified them at connect(2)
	Mode, Role    uint8    // ModeDirect or ModeRouted; RoleInitiator or RoleAcceptor
	PeerAccepts   uint8    // PeerAcceptsFDs, PeerAcceptsMemfd
	RoutedReason  uint8    // Routed*: why ROUTED; RoutedNone when DIRECT
	Names         []string // the peer address's names at introduction
}

// Encode builds the body.
func (in IntroduceBody) Encode() []byte {
	b := binary.LittleEndian.AppendUint64(nil, in.Channel)
	b = binary.LittleEndian.AppendUint64(b, in.Local)
	b = binary.LittleEndian.AppendUint64(b, in.Peer)
	b = binary.LittleEndian.AppendUint32(b, in.PID)
	b = binary.LittleEndian.AppendUint32(b, in.UID)
	b = binary.LittleEndian.AppendUint32(b, in.GID)
	b = append(b, in.Mode, in.Role, in.PeerAccepts, in.RoutedReason)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(in.Names)))
	b = append(b, 0, 0)
	names := appendNames(nil, in.Names)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(names)))
	return append(b, names...)
}

// ParseIntroduce reads INTRODUCE's body. nfds is the frame's nfds: 1 in
// DIRECT mode, 0 in ROUTED (MALFORMED otherwise).
func ParseIntroduce(b []byte, nfds uint16) (IntroduceBody, error) {
	if len(b) < 48 {
		return IntroduceBody{}, short(TypeIntroduce, len(b), 48)
	}
	in := IntroduceBody{
		Channel: le64(b), Local: le64(b[8:]), Peer: le64(b[16:]),
		PID: le32(b[24:]), UID: le32(b[28:]), GID: le32(b[32:]),
		Mode: b[36], Role: b[37], PeerAccepts: b[38], RoutedReason: b[39],
	}
	k := int(le16(b[40:]))
	nl := int(le32(b[44:]))
	switch {
	case le16(b[42:]) != 0 || in.PeerAccepts&^3 != 0:
		return IntroduceBody{}, errorf(opBody, CodeMalformed, "INTRODUCE: reserved bits set")
	case in.Mode == ModeDirect && (nfds != 1 || in.Channel == 0 || in.RoutedReason != RoutedNone):
		return IntroduceBody{}, errorf(opBody, CodeMalformed, "INTRODUCE DIRECT: nfds %d, channel %d, reason %d", nfds, in.Channel, in.RoutedReason)
	case in.Mode == ModeRouted && (nfds != 0 || in.Channel != 0 || in.RoutedReason == RoutedNone || in.RoutedReason > maxRoutedReason):
		return IntroduceBody{}, errorf(opBody, CodeMalformed, "INTRODUCE ROUTED: nfds %d, channel %d, reason %d", nfds, in.Channel, in.RoutedReason)
	case in.Mode != ModeDirect && in.Mode != ModeRouted, in.Role != RoleInitiator && in.Role != RoleAcceptor:
		return IntroduceBody{}, errorf(opBody, CodeMalformed, "INTRODUCE: mode %d, role %d", in.Mode, in.Role)
	case len(b)-48 < nl:
		return IntroduceBody{}, short(TypeIntroduce, len(b), 48+nl)
	}
	names, err := parseNames(TypeIntroduce, b[48:48+nl], k)
	if err != nil {
		return IntroduceBody{}, err
	}
	in.Names = names
	return in, nil
}

// appendNames appends each name as len u8 + bytes.
func appendNames(b []byte, names []string) []byte {
	for _, n := range names {
		b = append(b, byte(len(n)))
		b = append(b, n...)
	}
	return b
}

// parseNames reads exactly k names of len u8 + bytes filling b.
func parseNames(t Type, b []byte, k int) ([]string, error) {
	var names []string
	for len(b) > 0 {
		n := int(b[0])
		if len(b) < 1+n {
			return nil, errorf(opBody, CodeMalformed, "%v: name runs past names_len", t)
		}
		s := string(b[1 : 1+n])
		if err := CheckName(s); err != nil {
			return nil, errorf(opBody, CodeInvalid, "%v: %v", t, err)
		}
		names = append(names, s)
		b = b[1+n:]
	}
	if len(names) != k {
		return nil, errorf(opBody, CodeMalformed, "%v: %d names, the count says %d", t, len(names), k)
	}
	return names, nil
}

// REVOKE reasons.
const (
	RevokePolicy  = 1 // the policy no longer allows the pair: close at once
	RevokeMonitor = 2 // a monitor attached: drain with END
	RevokeGone    = 3 // an address of the pair was removed: close at once
)

// RevokeBody is REVOKE's body.
type RevokeBody struct {
	Channel uint64 // the channel's id
	Reason  uint8  // RevokePolicy, RevokeMonitor, RevokeGone
}

// Encode builds the 16-byte body.
func (r RevokeBody) Encode() []byte {
	b := binary.LittleEndian.AppendUint64(nil, r.Channel)
	return append(b, r.Reason, 0, 0, 0, 0, 0, 0, 0)
}

// ParseRevoke reads REVOKE's body.
func ParseRevoke(b []byte) (RevokeBody, error) {
	if len(b) < 16 {
		return RevokeBody{}, short(TypeRevoke, len(b), 16)
	}
	r := RevokeBody{Channel: le64(b), Reason: b[8]}
	if !zero(b[9:16]) || r.Reason < RevokePolicy || r.Reason > RevokeGone || r.Channel == 0 {
		return RevokeBody{}, errorf(opBody, CodeMalformed, "REVOKE: channel %d, reason %d, or reserved bytes set", r.Channel, r.Reason)
	}
	return r, nil
}

// U64Body is the body of REMOVE_ADDRESS (address), DISCONNECT (channel
// id) and REMOVE_MATCH (cookie): one u64 at offset 0.
func U64Body(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

// ParseU64 reads a one-u64 body of type t.
func ParseU64(t Type, b []byte) (uint64, error) {
	if len(b) < 8 {
		return 0, short(t, len(b), 8)
	}
	return le64(b), nil
}

// AddMatchBody is ADD_MATCH's body.
type AddMatchBody struct {
	Cookie uint64 // nonzero, unique among the endpoint's matches
	Sender uint64 // 0 any, 1 the bus, else an address
	Bloom  []byte // bloom_size bytes: MatchBloom of the rules
	Rules  []Rule // at most MaxRules
}

// MaxRules is the most rules one match has.
const MaxRules = 32

// Encode builds the body.
func (m AddMatchBody) Encode() []byte {
	b := binary.LittleEndian.AppendUint64(nil, m.Cookie)
	b = binary.LittleEndian.AppendUint64(b, m.Sender)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(m.Bloom)))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(m.Rules)))
	b = append(b, 0, 0, 0, 0)
	b = append(b, m.Bloom...)
	for _, r := range m.Rules {
		b = append(b, byte(r.Kind), r.Index)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(r.Value)))
		b = append(b, r.Value...)
	}
	return b
}

// ParseAddMatch reads ADD_MATCH's body against the bus's bloom
// parameters: bloom_size equal to p's (BAD_BLOOM), rules well-formed
// (MALFORMED), their values and kinds valid (INVALID), and the bloom the
// one of the rules (BAD_BLOOM).
func ParseAddMatch(p Bloom, b []byte) (AddMatchBody, error) {
	if len(b) < 24 {
		return AddMatchBody{}, short(TypeAddMatch, len(b), 24)
	}
	m := AddMatchBody{Cookie: le64(b), Sender: le64(b[8:])}
	bs, r := int(le16(b[16:])), int(le16(b[18:]))
	switch {
	case le32(b[20:]) != 0:
		return AddMatchBody{}, errorf(opBody, CodeMalformed, "ADD_MATCH: flags set")
	case m.Cookie == 0 || m.Sender > MaxAddress || r > MaxRules:
		return AddMatchBody{}, errorf(opBody, CodeInvalid, "ADD_MATCH: cookie %d, sender %d, %d rules", m.Cookie, m.Sender, r)
	case bs != p.Size():
		return AddMatchBody{}, errorf(opBody, CodeBadBloom, "ADD_MATCH: bloom_size %d, the bus's is %d", bs, p.Size())
	case len(b) < 24+bs:
		return AddMatchBody{}, short(TypeAddMatch, len(b), 24+bs)
	}
	m.Bloom = b[24 : 24+bs]
	rest := b[24+bs:]
	for i := 0; i < r; i++ {
		if len(rest) < 4 || len(rest) < 4+int(le16(rest[2:])) {
			return AddMatchBody{}, errorf(opBody, CodeMalformed, "ADD_MATCH: rule %d runs past the body", i)
		}
		n := int(le16(rest[2:]))
		m.Rules = append(m.Rules, Rule{Kind: RuleKind(rest[0]), Index: rest[1], Value: string(rest[4 : 4+n])})
		rest = rest[4+n:]
	}
	if err := CheckRules(m.Rules); err != nil {
		return AddMatchBody{}, err
	}
	if !equalBytes(m.Bloom, MatchBloom(p, m.Rules)) {
		return AddMatchBody{}, errorf(opBody, CodeBadBloom, "ADD_MATCH: the bloom is not the rules' bloom")
	}
	return m, nil
}

// CheckRules checks a match's rules: known kinds, index 0 except for
// ARG, ARG_PATH (0–15) and ARG0_NAMESPACE (0), each kind at most once
// (ARG and ARG_PATH once per index), values of the right syntax. INVALID
// otherwise.
func CheckRules(rules []Rule) error {
	type key struct {
		k RuleKind
		i uint8
	}
	seen := map[key]bool{}
	for _, r := range rules {
		bad := func(why string) error {
			return errorf(opBody, CodeInvalid, "match rule kind %d index %d: %s", r.Kind, r.Index, why)
		}
		switch {
		case r.Kind < RulePath || r.Kind > RuleSenderName:
			return bad("unknown kind")
		case (r.Kind == RuleArg || r.Kind == RuleArgPath) && r.Index >= MaxArgs:
			return bad("index above 15")
		case r.Kind != RuleArg && r.Kind != RuleArgPath && r.Index != 0:
			return bad("index set")
		case seen[key{r.Kind, r.Index}]:
			return bad("twice")
		}
		seen[key{r.Kind, r.Index}] = true
		var err error
		switch r.Kind {
		case RulePath, RulePathNamespace:
			err = CheckPath(r.Value)
		case RuleInterface:
			err = CheckInterface(r.Value)
		case RuleMember:
			err = CheckMember(r.Value)
		case RuleArg, RuleArgPath, RuleArg0Namespace:
			err = CheckMatchArg(r.Value)
		case RuleSenderName:
			err = CheckName(r.Value)
		}
		if err != nil {
			return bad(err.Error())
		}
	}
	return nil
}

func equalBytes(a, b []byte) bool { return string(a) == string(b) }

// ResolveBody is RESOLVE's body: exactly one of Address and Name.
type ResolveBody struct {
	Address uint64 // 0 to go by Name
	Name    string // "" with an address
}

// Encode builds the body.
func (r ResolveBody) Encode() []byte {
	b := binary.LittleEndian.AppendUint64(nil, r.Address)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(r.Name)))
	b = append(b, 0, 0)
	return append(b, r.Name...)
}

// ParseResolve reads RESOLVE's body.
func ParseResolve(b []byte) (ResolveBody, error) {
	if len(b) < 12 {
		return ResolveBody{}, short(TypeResolve, len(b), 12)
	}
	r := ResolveBody{Address: le64(b)}
	n := int(le16(b[8:]))
	if le16(b[10:]) != 0 {
		return ResolveBody{}, errorf(opBody, CodeMalformed, "RESOLVE: reserved bytes set")
	}
	if len(b) < 12+n {
		return ResolveBody{}, short(TypeResolve, len(b), 12+n)
	}
	r.Name = string(b[12 : 12+n])
	if (r.Address == 0) == (n == 0) || r.Address > MaxAddress {
		return ResolveBody{}, errorf(opBody, CodeInvalid, "RESOLVE: give exactly one of address and name")
	}
	if n > 0 {
		if err := CheckName(r.Name); err != nil {
			return ResolveBody{}, errorf(opBody, CodeInvalid, "RESOLVE: %v", err)
		}
	}
	return r, nil
}

// IDENTITY flags.
const (
	IdentityMonitor  uint16 = 1 << 0
	IdentityFDs      uint16 = 1 << 1
	IdentityMemfd    uint16 = 1 << 2
	IdentityNoDirect uint16 = 1 << 3
)

// IdentityBody is IDENTITY's body: one address on the bus.
type IdentityBody struct {
	Address, Primary uint64   // the address; its endpoint's primary address
	PID, UID, GID    uint32   // the endpoint's verified credentials
	Flags            uint16   // IdentityMonitor, IdentityFDs, IdentityMemfd, IdentityNoDirect
	Label            string   // HELLO's label
	Owned, Queued    []string // names it owns; names it is queued for
}

// Encode builds the body.
func (id IdentityBody) Encode() []byte {
	b := binary.LittleEndian.AppendUint64(nil, id.Address)
	b = binary.LittleEndian.AppendUint64(b, id.Primary)
	b = binary.LittleEndian.AppendUint32(b, id.PID)
	b = binary.LittleEndian.AppendUint32(b, id.UID)
	b = binary.LittleEndian.AppendUint32(b, id.GID)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(id.Owned)))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(id.Queued)))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(id.Label)))
	b = binary.LittleEndian.AppendUint16(b, id.Flags)
	names := appendNames(appendNames(nil, id.Owned), id.Queued)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(names)))
	b = append(b, id.Label...)
	return append(b, names...)
}

// ParseIdentity reads IDENTITY's body.
func ParseIdentity(b []byte) (IdentityBody, error) {
	if len(b) < 40 {
		return IdentityBody{}, short(TypeIdentity, len(b), 40)
	}
	id := IdentityBody{Address: le64(b), Primary: le64(b[8:]), PID: le32(b[16:]), UID: le32(b[20:]),
		GID: le32(b[24:]), Flags: le16(b[34:])}
	k, q, ll, nl := int(le16(b[28:])), int(le16(b[30:])), int(le16(b[32:])), int(le32(b[36:]))
	if id.Flags&^0xf != 0 {
		return IdentityBody{}, errorf(opBody, CodeMalformed, "IDENTITY: unknown flags %#x", id.Flags)
	}
	if len(b)-40 < ll || len(b)-40-ll < nl {
		return IdentityBody{}, short(TypeIdentity, len(b), 40+ll+nl)
	}
	id.Label = string(b[40 : 40+ll])
	if err := CheckLabel(id.Label); err != nil {
		return IdentityBody{}, errorf(opBody, CodeInvalid, "IDENTITY: %v", err)
	}
	names, err := parseNames(TypeIdentity, b[40+ll:40+ll+nl], k+q)
	if err != nil {
		return IdentityBody{}, err
	}
	id.Owned, id.Queued = names[:k:k], names[k:]
	if len(id.Queued) == 0 {
		id.Queued = nil
	}
	if k == 0 {
		id.Owned = nil
	}
	return id, nil
}

// U32Body is the body of LIST_END (count) and BECOME_MONITOR (flags, 0).
func U32Body(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

// ParseU32 reads a one-u32 body of type t.
func ParseU32(t Type, b []byte) (uint32, error) {
	if len(b) < 4 {
		return 0, short(t, len(b), 4)
	}
	v := le32(b)
	if t == TypeBecomeMonitor && v != 0 {
		return 0, errorf(opBody, CodeMalformed, "BECOME_MONITOR: flags %#x", v)
	}
	return v, nil
}
