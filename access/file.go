package access

import (
	"io/fs"
	"os"
	"sort"
	"strconv"
	"sync"
	"syscall"
)

// CDBFile is a CDB rules file that a long-running server looks up: it
// reads the file again whenever it has been replaced or changed (another
// inode, size or mtime), so recompiling the rules with an atomic rename
// takes effect for the next connection, as with s6-ipcserver-access which
// opens the file for every connection. Safe for concurrent use.
type CDBFile struct {
	Path string

	mu     sync.Mutex
	cdb    *CDB
	ino    uint64
	size   int64
	mtimeN int64
}

// Lookup implements Ruleset.
func (f *CDBFile) Lookup(key string) (Result, error) {
	c, err := f.current()
	if err != nil {
		return Result{}, err
	}
	return c.Lookup(key)
}

func (f *CDBFile) current() (*CDB, error) {
	fi, err := os.Stat(f.Path)
	if err != nil {
		return nil, err
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cdb != nil && ino == f.ino && fi.Size() == f.size && fi.ModTime().UnixNano() == f.mtimeN {
		return f.cdb, nil
	}
	c, err := OpenCDB(f.Path)
	if err != nil {
		return nil, err
	}
	f.cdb, f.ino, f.size, f.mtimeN = c, ino, fi.Size(), fi.ModTime().UnixNano()
	return c, nil
}

// Rules is a ruleset held in memory, keyed like a rules directory
// ("uid/0", "gid/100", "uid/default"). A missing key does not match.
type Rules map[string]Result

// Lookup implements Ruleset.
func (r Rules) Lookup(key string) (Result, error) {
	if !validKey(key) {
		return Result{}, &fs.PathError{Op: "access lookup", Path: key, Err: fs.ErrInvalid}
	}
	return r[key], nil
}

// AllowIDs returns Rules that allow the given uids and gids and deny
// everyone else (the --allow-uid / --allow-gid shorthand).
func AllowIDs(uids, gids []int) Rules {
	r := Rules{}
	for _, u := range uids {
		r["uid/"+strconv.Itoa(u)] = Result{Verdict: Allow}
	}
	for _, g := range gids {
		r["gid/"+strconv.Itoa(g)] = Result{Verdict: Allow}
	}
	return r
}

// Keys returns the rule names in r, sorted.
func (r Rules) Keys() []string {
	ks := make([]string, 0, len(r))
	for k := range r {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
