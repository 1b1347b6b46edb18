//go:build !amd64

package lockdown

// No allow-list has been measured for this architecture: Creator fails
// rather than guess (a missing call would kill the creator at random).
const (
	auditArch   = 0
	archNrLimit = 0
)

var allowed []int
