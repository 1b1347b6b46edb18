package porter

import (
	"testing"

	"github.com/porter-ipc/porter/broker"
)

// TestSharingWire: porter's Sharing and broker.Share differ in their zero
// values; the request carries the broker's value for each.
func TestSharingWire(t *testing.T) {
	var zero Config
	for _, tc := range []struct {
		s    Sharing
		want broker.Share
	}{
		{zero.Share, broker.ShareApp},
		{ShareWithApp, broker.ShareApp},
		{ShareWithNobody, broker.ShareNone},
		{ShareWithAny, broker.ShareAny},
	} {
		if got, err := tc.s.wire(); err != nil || got != tc.want {
			t.Errorf("Sharing(%d).wire() = %v, %v, want %v", tc.s, got, err, tc.want)
		}
	}
	if _, err := Sharing(3).wire(); err == nil {
		t.Error("Sharing(3) accepted")
	}
}
