//go:build !amd64

package lockdown

// No allow-list has been measured for this architecture. A guessed one
// would kill the creator at random on the first call it lacks, so
// Creator installs no filter here and says so in Report.NoSeccomp; the
// other steps (no new privileges, the bounding set, Landlock) still
// apply.
const (
	auditArch   = 0
	archNrLimit = 0
)

var allowed []int
