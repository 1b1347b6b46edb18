package broker

import (
	"cmp"
	"slices"
)

func sortSockets(l []SocketInfo) {
	slices.SortFunc(l, func(a, b SocketInfo) int {
		if c := cmp.Compare(a.Proto, b.Proto); c != 0 {
			return c
		}
		return a.Addr.Compare(b.Addr)
	})
}

func sortHolders(l []HolderInfo) {
	slices.SortFunc(l, func(a, b HolderInfo) int {
		if c := cmp.Compare(a.State, b.State); c != 0 {
			return c
		}
		if c := cmp.Compare(a.PID, b.PID); c != 0 {
			return c
		}
		return slices.Compare(a.TokenPrefix[:], b.TokenPrefix[:])
	})
}
