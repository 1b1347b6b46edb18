//go:build !race

package bus

// raceEnabled: the race detector slows the bloom measurement tenfold.
const raceEnabled = false
