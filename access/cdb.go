package access

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
)

// CDB is a compiled rules database, the file s6-accessrules-cdb-from-fs
// writes from a rules directory: a D. J. Bernstein constant database
// whose keys are rule names ("uid/0") and whose values are
//
//	"D"                                   deny
//	"A" envlen:u16be env execlen:u16be exec   allow
//
// where env is a run of NUL-terminated "NAME=value" (set) or "NAME"
// (unset) entries, at most 4096 bytes, and exec at most 4096 bytes. Any
// other first byte does not match. A CDB holds the whole file in memory;
// open it again to see a recompiled file.
type CDB struct {
	path string
	data []byte
}

const (
	cdbHeader  = 2048 // 256 (pos, nslots) pairs of uint32le
	maxEnvLen  = 4096
	maxExecLen = 4096
)

// OpenCDB reads the CDB file at path.
func OpenCDB(path string) (*CDB, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseCDB(path, data)
}

// ParseCDB checks that data is long enough to be a CDB and returns it as
// one; name is used in errors. Lookups check every offset they follow, so
// a corrupt file gives errors, never a panic or an endless loop.
func ParseCDB(name string, data []byte) (*CDB, error) {
	if len(data) < cdbHeader {
		return nil, &fs.PathError{Op: "cdb open", Path: name, Err: fmt.Errorf("%w: %d bytes, shorter than the 2048-byte header", ErrMalformed, len(data))}
	}
	return &CDB{path: name, data: data}, nil
}

// cdbHash is the CDB hash: h = 5381; h = (h*33) ^ c.
func cdbHash(key []byte) uint32 {
	h := uint32(5381)
	for _, c := range key {
		h = (h + h<<5) ^ uint32(c)
	}
	return h
}

func (c *CDB) u32(off uint64) (uint32, bool) {
	if off+4 > uint64(len(c.data)) {
		return 0, false
	}
	return binary.LittleEndian.Uint32(c.data[off:]), true
}

func (c *CDB) malformed(format string, args ...any) error {
	return &fs.PathError{Op: "cdb lookup", Path: c.path, Err: fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)}
}

// find returns the value stored under key, or nil, false.
func (c *CDB) find(key []byte) ([]byte, bool, error) {
	h := cdbHash(key)
	slot := uint64(h&255) * 8
	tpos, _ := c.u32(slot)
	nslots, _ := c.u32(slot + 4)
	if nslots == 0 {
		return nil, false, nil
	}
	if uint64(tpos)+uint64(nslots)*8 > uint64(len(c.data)) {
		return nil, false, c.malformed("hash table %d past the end", h&255)
	}
	start := (h >> 8) % nslots
	for i := uint32(0); i < nslots; i++ {
		s := uint64(tpos) + uint64((start+i)%nslots)*8
		sh, _ := c.u32(s)
		rpos, _ := c.u32(s + 4)
		if rpos == 0 {
			return nil, false, nil
		}
		if sh != h {
			continue
		}
		klen, ok1 := c.u32(uint64(rpos))
		dlen, ok2 := c.u32(uint64(rpos) + 4)
		if !ok1 || !ok2 {
			return nil, false, c.malformed("record at %d past the end", rpos)
		}
		kstart := uint64(rpos) + 8
		dstart := kstart + uint64(klen)
		if dstart+uint64(dlen) > uint64(len(c.data)) {
			return nil, false, c.malformed("record at %d past the end", rpos)
		}
		if bytes.Equal(c.data[kstart:dstart], key) {
			return c.data[dstart : dstart+uint64(dlen)], true, nil
		}
	}
	return nil, false, nil
}

// Lookup implements Ruleset.
func (c *CDB) Lookup(key string) (Result, error) {
	v, ok, err := c.find([]byte(key))
	if err != nil || !ok {
		return Result{}, err
	}
	r, err := DecodeRule(v)
	if err != nil {
		return Result{}, &fs.PathError{Op: "cdb lookup", Path: c.path, Err: fmt.Errorf("key %q: %w", key, err)}
	}
	return r, nil
}

// DecodeRule decodes one value of a compiled rules database (see CDB).
func DecodeRule(v []byte) (Result, error) {
	if len(v) == 0 {
		return Result{}, fmt.Errorf("%w: empty rule", ErrMalformed)
	}
	switch v[0] {
	case 'D':
		return Result{Verdict: Deny}, nil
	case 'A':
	default:
		return Result{}, nil
	}
	if len(v) < 5 {
		return Result{}, fmt.Errorf("%w: allow rule of %d bytes, need 5", ErrMalformed, len(v))
	}
	envlen := int(binary.BigEndian.Uint16(v[1:]))
	if envlen > maxEnvLen || 5+envlen > len(v) {
		return Result{}, fmt.Errorf("%w: env length %d in a rule of %d bytes", ErrMalformed, envlen, len(v))
	}
	execlen := int(binary.BigEndian.Uint16(v[3+envlen:]))
	if execlen > maxExecLen || 5+envlen+execlen != len(v) {
		return Result{}, fmt.Errorf("%w: exec length %d in a rule of %d bytes", ErrMalformed, execlen, len(v))
	}
	r := Result{Verdict: Allow, Exec: string(v[5+envlen:])}
	env := v[3 : 3+envlen]
	for len(env) > 0 {
		i := bytes.IndexByte(env, 0)
		if i < 0 {
			return Result{}, fmt.Errorf("%w: env entry without its NUL", ErrMalformed)
		}
		entry := string(env[:i])
		env = env[i+1:]
		name, value, set := cutEq(entry)
		if name == "" {
			return Result{}, fmt.Errorf("%w: env entry with an empty name", ErrMalformed)
		}
		r.Env = append(r.Env, EnvChange{Name: name, Value: value, Unset: !set})
	}
	return r, nil
}

func cutEq(s string) (before, after string, found bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == '=' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}
