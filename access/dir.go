package access

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// maxVarSize is the most of an env/ file that is read, as s6-envdir does.
const maxVarSize = 4095

// maxExecSize is the most of an exec file that is read.
const maxExecSize = 4096

// Dir is a rules directory in s6's accessrules format, read afresh on
// every lookup, so edits take effect for the next connection. A key K is
// the directory Dir/K; it allows if K/allow is readable (access(2) R_OK,
// as s6 checks), else denies if K/deny is readable, else does not match.
type Dir string

// Lookup implements Ruleset.
func (d Dir) Lookup(key string) (Result, error) {
	if !validKey(key) {
		return Result{}, &fs.PathError{Op: "access lookup", Path: key, Err: fs.ErrInvalid}
	}
	base := filepath.Join(string(d), key)
	ok, err := readable(filepath.Join(base, "allow"))
	if err != nil {
		return Result{}, err
	}
	if !ok {
		ok, err = readable(filepath.Join(base, "deny"))
		if err != nil {
			return Result{}, err
		}
		if ok {
			return Result{Verdict: Deny}, nil
		}
		return Result{}, nil
	}
	r := Result{Verdict: Allow}
	if r.Env, err = ReadEnvDir(filepath.Join(base, "env")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return Result{}, err
	}
	exec, err := readUpTo(filepath.Join(base, "exec"), maxExecSize)
	if err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, fs.ErrPermission) {
		return Result{}, err
	}
	r.Exec = string(exec)
	return r, nil
}

// readable is access(path, R_OK): false for a missing or unreadable file,
// an error for anything else (ENOTDIR, ELOOP, EIO …), as s6 does.
func readable(path string) (bool, error) {
	for {
		err := unix.Access(path, unix.R_OK)
		switch err {
		case nil:
			return true, nil
		case unix.EINTR:
			continue
		case unix.ENOENT, unix.EACCES:
			return false, nil
		}
		return false, &fs.PathError{Op: "access", Path: path, Err: err}
	}
}

// ReadEnvDir reads a directory in s6-envdir's format: each file NAME sets
// NAME to the file's first line with trailing spaces, tabs and CRs
// removed and NUL bytes turned into newlines; an empty file unsets NAME.
// Names starting with a dot or holding '=' are skipped. Changes come in
// name order.
func ReadEnvDir(dir string) ([]EnvChange, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, ".") || strings.ContainsRune(n, '=') {
			continue
		}
		names = append(names, n)
	}
	sort.Strings(names)
	var out []EnvChange
	for _, n := range names {
		b, err := readUpTo(filepath.Join(dir, n), maxVarSize)
		if err != nil {
			return nil, err
		}
		if len(b) == 0 {
			out = append(out, EnvChange{Name: n, Unset: true})
			continue
		}
		out = append(out, EnvChange{Name: n, Value: EnvValue(b)})
	}
	return out, nil
}

// EnvValue turns an env/ file's content into the variable's value, as
// s6-envdir does: the first line, trailing blanks removed, NUL as newline.
func EnvValue(b []byte) string {
	if i := strings.IndexByte(string(b), '\n'); i >= 0 {
		b = b[:i]
	}
	b = []byte(strings.TrimRight(string(b), " \t\r"))
	for i := range b {
		if b[i] == 0 {
			b[i] = '\n'
		}
	}
	return string(b)
}

func readUpTo(path string, n int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(n)))
	if err != nil {
		return nil, err // already an *fs.PathError from File.Read
	}
	return b, nil
}
