package fdpass

import "encoding/binary"

// nativeUint32 decodes an int as the kernel wrote it into a control message.
func nativeUint32(b []byte) uint32 { return binary.NativeEndian.Uint32(b) }
