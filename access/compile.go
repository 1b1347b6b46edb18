package access

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"
)

// CompileCDB compiles the rules directory dir into CDB bytes, the same
// database s6-accessrules-cdb-from-fs writes (byte for byte up to the
// order of records): every DIR/TYPE/NAME with an allow file becomes an
// allow rule with its env/ and exec, every one with only a deny file a
// deny rule, others nothing. Write the result to a temporary file and
// rename it over the old one so servers never see half a database.
func CompileCDB(dir string) ([]byte, error) {
	types, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var keys []string
	vals := map[string][]byte{}
	for _, t := range types {
		if t.Name()[0] == '.' {
			continue
		}
		rules, err := os.ReadDir(filepath.Join(dir, t.Name()))
		if err != nil {
			return nil, err
		}
		for _, r := range rules {
			if r.Name()[0] == '.' {
				continue
			}
			key := t.Name() + "/" + r.Name()
			v, err := compileRule(filepath.Join(dir, key))
			if err != nil {
				return nil, err
			}
			if v != nil {
				keys = append(keys, key)
				vals[key] = v
			}
		}
	}
	sort.Strings(keys)
	return makeCDB(keys, vals), nil
}

// compileRule encodes one rule directory, nil when it neither allows nor
// denies. Like s6-accessrules-cdb-from-fs it tests for existence (F_OK),
// where a lookup in a directory tests for readability.
func compileRule(base string) ([]byte, error) {
	exists := func(p string) (bool, error) {
		err := unix.Access(p, unix.F_OK)
		if err == nil {
			return true, nil
		}
		if err == unix.ENOENT || err == unix.EACCES {
			return false, nil
		}
		return false, &fs.PathError{Op: "access", Path: p, Err: err}
	}
	allow, err := exists(filepath.Join(base, "allow"))
	if err != nil {
		return nil, err
	}
	if !allow {
		deny, err := exists(filepath.Join(base, "deny"))
		if err != nil || !deny {
			return nil, err
		}
		return []byte("D"), nil
	}
	changes, err := ReadEnvDir(filepath.Join(base, "env"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	var env []byte
	for _, c := range changes {
		env = append(env, c.Name...)
		if !c.Unset {
			env = append(env, '=')
			env = append(env, c.Value...)
		}
		env = append(env, 0)
	}
	if len(env) > maxEnvLen {
		return nil, &fs.PathError{Op: "compile", Path: filepath.Join(base, "env"), Err: fmt.Errorf("env takes %d bytes, more than %d", len(env), maxEnvLen)}
	}
	exec, err := readUpTo(filepath.Join(base, "exec"), maxExecLen)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	v := []byte{'A'}
	v = binary.BigEndian.AppendUint16(v, uint16(len(env)))
	v = append(v, env...)
	v = binary.BigEndian.AppendUint16(v, uint16(len(exec)))
	return append(v, exec...), nil
}

// makeCDB builds a constant database of the given keys, in order.
func makeCDB(keys []string, vals map[string][]byte) []byte {
	out := make([]byte, cdbHeader)
	type ent struct{ h, pos uint32 }
	var tables [256][]ent
	for _, k := range keys {
		v := vals[k]
		h := cdbHash([]byte(k))
		tables[h&255] = append(tables[h&255], ent{h, uint32(len(out))})
		out = binary.LittleEndian.AppendUint32(out, uint32(len(k)))
		out = binary.LittleEndian.AppendUint32(out, uint32(len(v)))
		out = append(out, k...)
		out = append(out, v...)
	}
	for i, t := range tables {
		n := uint32(2 * len(t))
		binary.LittleEndian.PutUint32(out[i*8:], uint32(len(out)))
		binary.LittleEndian.PutUint32(out[i*8+4:], n)
		slots := make([]ent, n)
		for _, e := range t {
			j := (e.h >> 8) % n
			for slots[j].pos != 0 {
				j = (j + 1) % n
			}
			slots[j] = e
		}
		for _, s := range slots {
			out = binary.LittleEndian.AppendUint32(out, s.h)
			out = binary.LittleEndian.AppendUint32(out, s.pos)
		}
	}
	return out
}
