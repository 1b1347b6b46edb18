package cap

// RefsRetries is how many times this process waited on ETOOMANYREFS.
func RefsRetries() int64 { return refsRetries.Load() }
