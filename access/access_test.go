package access

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"testing"

	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// mkrules builds a rules tree under a temp dir: each entry maps a path
// relative to the root to a file's content ("<dir>" makes a directory).
func mkrules(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range files {
		full := filepath.Join(root, p)
		if content == "<dir>" {
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestKeysOrder(t *testing.T) {
	testutil.CheckLeaks(t)
	got := Keys(5, 7, 5, 7)
	want := []string{"uid/self", "uid/5", "gid/self", "gid/7", "uid/default"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Keys(self) = %v, want %v", got, want)
	}
	got = Keys(5, 7, 0, 0)
	want = []string{"uid/5", "gid/7", "uid/default"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Keys(other) = %v, want %v", got, want)
	}
}

// rulesTree is one tree that exercises every step of the lookup order.
var rulesTree = map[string]string{
	"uid/self/deny":       "",
	"uid/0/allow":         "",
	"uid/0/env/FOO":       "hello world  \nsecond line\n",
	"uid/0/env/EMPTY":     "",
	"uid/0/env/NUL":       "a\x00b",
	"uid/0/env/.hidden":   "x",
	"uid/0/env/A=B":       "x",
	"uid/0/exec":          "echo diverted",
	"uid/10/allow":        "",
	"uid/10/deny":         "", // allow wins over deny in one rule
	"uid/11/deny":         "",
	"uid/12/<dir>":        "<dir>", // neither: falls through
	"uid/12":              "<dir>",
	"gid/self/allow":      "",
	"gid/20/allow":        "",
	"gid/21/deny":         "",
	"uid/default/deny":    "",
	"gid/22/env/IGNORED":  "no allow, so no env",
	"gid/22/nothing-here": "",
}

func TestLookupOrder(t *testing.T) {
	testutil.CheckLeaks(t)
	files := map[string]string{}
	for k, v := range rulesTree {
		if v == "<dir>" {
			files[k] = v
			continue
		}
		files[k] = v
	}
	delete(files, "uid/12/<dir>")
	root := mkrules(t, files)
	cdbData, err := CompileCDB(root)
	if err != nil {
		t.Fatal(err)
	}
	cdb, err := ParseCDB("compiled", cdbData)
	if err != nil {
		t.Fatal(err)
	}
	const self, selfG = 1000, 1000
	cases := []struct {
		name     string
		uid, gid int
		verdict  Verdict
		key      string
	}{
		{"uid/self beats uid/N", self, 20, Deny, "uid/self"},
		{"uid/N allows", 0, 21, Allow, "uid/0"},
		{"allow wins over deny", 10, 21, Allow, "uid/10"},
		{"uid deny beats gid allow", 11, 20, Deny, "uid/11"},
		{"empty uid rule falls to gid/self", 12, selfG, Allow, "gid/self"},
		{"gid/N allows", 13, 20, Allow, "gid/20"},
		{"gid/N denies", 13, 21, Deny, "gid/21"},
		{"rule with env but no allow falls through", 13, 22, Deny, "uid/default"},
		{"no rule: uid/default", 14, 23, Deny, "uid/default"},
	}
	for _, c := range cases {
		for _, rs := range []struct {
			name string
			rs   Ruleset
		}{{"dir", Dir(root)}, {"cdb", cdb}} {
			r, err := CheckAs(rs.rs, c.uid, c.gid, self, selfG)
			if err != nil {
				t.Fatalf("%s/%s: %v", c.name, rs.name, err)
			}
			if r.Verdict != c.verdict || r.Key != c.key {
				t.Errorf("%s/%s: got %v by %q, want %v by %q", c.name, rs.name, r.Verdict, r.Key, c.verdict, c.key)
			}
		}
	}

	// No uid/default at all: no match, which is not allowed.
	if err := os.RemoveAll(filepath.Join(root, "uid/default")); err != nil {
		t.Fatal(err)
	}
	r, err := CheckAs(Dir(root), 14, 23, self, selfG)
	if err != nil || r.Verdict != NoMatch || r.Allowed() || r.Key != "" {
		t.Fatalf("no rule: got %+v, %v; want NoMatch", r, err)
	}
}

func TestEnvAndExec(t *testing.T) {
	testutil.CheckLeaks(t)
	files := map[string]string{}
	for k, v := range rulesTree {
		if v != "<dir>" {
			files[k] = v
		}
	}
	root := mkrules(t, files)
	want := []EnvChange{
		{Name: "EMPTY", Unset: true},
		{Name: "FOO", Value: "hello world"},
		{Name: "NUL", Value: "a\nb"},
	}
	r, err := Dir(root).Lookup("uid/0")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(r.Env, want) || r.Exec != "echo diverted" {
		t.Fatalf("dir: env %+v exec %q; want %+v", r.Env, r.Exec, want)
	}
	data, err := CompileCDB(root)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := ParseCDB("x", data)
	r, err = c.Lookup("uid/0")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(r.Env, want) || r.Exec != "echo diverted" {
		t.Fatalf("cdb: env %+v exec %q; want %+v", r.Env, r.Exec, want)
	}
	env := ApplyEnv([]string{"EMPTY=was set", "KEEP=1", "FOO=old"}, r.Env)
	wantEnv := []string{"KEEP=1", "FOO=hello world", "NUL=a\nb"}
	if !reflect.DeepEqual(env, wantEnv) {
		t.Fatalf("ApplyEnv = %q, want %q", env, wantEnv)
	}
}

func TestDirErrors(t *testing.T) {
	testutil.CheckLeaks(t)
	// uid is a file, not a directory: ENOTDIR is an error, not a no-match.
	root := mkrules(t, map[string]string{"uid": "not a dir"})
	_, err := Check(Dir(root), 1, 1)
	if !errors.Is(err, unix.ENOTDIR) {
		t.Fatalf("uid as a file: err = %v, want ENOTDIR", err)
	}
	var pe *os.PathError
	if !errors.As(err, &pe) || pe.Op != "access" || pe.Path == "" {
		t.Fatalf("err = %#v, want a PathError with op and path", err)
	}
	// An env entry that is a directory cannot be read.
	root = mkrules(t, map[string]string{"uid/default/allow": "", "uid/default/env/SUB/x": ""})
	if _, err := Check(Dir(root), 1, 1); !errors.Is(err, unix.EISDIR) {
		t.Fatalf("env/SUB a directory: err = %v, want EISDIR", err)
	}
	// Keys that leave the tree are refused.
	for _, k := range []string{"", "/etc", "uid/../../etc", "uid//0", "uid/."} {
		if _, err := Dir(root).Lookup(k); err == nil {
			t.Errorf("Lookup(%q) succeeded", k)
		}
	}
	if _, err := OpenCDB(filepath.Join(root, "missing.cdb")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("OpenCDB(missing) = %v", err)
	}
}

func TestCDBMalformed(t *testing.T) {
	testutil.CheckLeaks(t)
	if _, err := ParseCDB("short", make([]byte, 100)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short file: %v", err)
	}
	values := map[string][]byte{
		"empty":           {},
		"short allow":     []byte("A\x00"),
		"env too long":    []byte("A\x00\x09ab\x00\x00"),
		"exec len wrong":  []byte("A\x00\x00\x00\x05ab"),
		"env without nul": []byte("A\x00\x03a=b\x00\x00"),
		"env empty name":  []byte("A\x00\x03=b\x00\x00\x00"),
		"env over 4096":   append(append([]byte("A\x10\x01"), make([]byte, 4097)...), 0, 0),
	}
	for name, v := range values {
		if _, err := DecodeRule(v); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: DecodeRule = %v, want ErrMalformed", name, err)
		}
		c, _ := ParseCDB(name, makeCDB([]string{"uid/0"}, map[string][]byte{"uid/0": v}))
		if _, err := Check(c, 0, 0); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Check = %v, want ErrMalformed", name, err)
		}
	}
	// Unknown first byte: no match, as s6 does.
	if r, err := DecodeRule([]byte("X")); err != nil || r.Verdict != NoMatch {
		t.Fatalf("unknown tag: %+v %v", r, err)
	}
	// A hash table pointing past the end.
	data := makeCDB([]string{"uid/0"}, map[string][]byte{"uid/0": []byte("D")})
	h := cdbHash([]byte("uid/0")) & 255
	data[h*8] = 0xff
	data[h*8+1] = 0xff
	c, _ := ParseCDB("corrupt", data)
	if _, err := c.Lookup("uid/0"); !errors.Is(err, ErrMalformed) {
		t.Fatalf("corrupt table: %v", err)
	}
}

// TestAgainstS6Compiler compiles the same tree with s6's own compiler and
// with CompileCDB, and checks all three forms give the same answers.
func TestAgainstS6Compiler(t *testing.T) {
	testutil.CheckLeaks(t)
	prog := testutil.RequireProgram(t, "s6-accessrules-cdb-from-fs")
	files := map[string]string{}
	for k, v := range rulesTree {
		if v != "<dir>" {
			files[k] = v
		}
	}
	root := mkrules(t, files)
	out := filepath.Join(t.TempDir(), "rules.cdb")
	if b, err := exec.Command(prog, out, root).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", prog, err, b)
	}
	s6cdb, err := OpenCDB(out)
	if err != nil {
		t.Fatal(err)
	}
	ours, err := CompileCDB(root)
	if err != nil {
		t.Fatal(err)
	}
	ourcdb, _ := ParseCDB("ours", ours)
	keys := []string{"uid/self", "uid/0", "uid/10", "uid/11", "uid/12", "uid/13", "gid/self", "gid/20", "gid/21", "gid/22", "uid/default", "ip4/0.0.0.0_0"}
	for _, k := range keys {
		want, err := Dir(root).Lookup(k)
		if err != nil {
			t.Fatal(err)
		}
		for name, c := range map[string]*CDB{"s6": s6cdb, "ours": ourcdb} {
			got, err := c.Lookup(k)
			if err != nil {
				t.Fatalf("%s %s: %v", name, k, err)
			}
			// s6 stores env entries in readdir order; names are unique,
			// so order does not change the result.
			sort.Slice(got.Env, func(i, j int) bool { return got.Env[i].Name < got.Env[j].Name })
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s cdb %s = %+v, dir = %+v", name, k, got, want)
			}
		}
	}
}

func TestCDBFileReloads(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "rules.cdb")
	write := func(v string) {
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, makeCDB([]string{"uid/7"}, map[string][]byte{"uid/7": []byte(v)}), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write("D")
	f := &CDBFile{Path: path}
	if r, err := Check(f, 7, 7); err != nil || r.Verdict != Deny {
		t.Fatalf("first: %+v %v", r, err)
	}
	write("A\x00\x00\x00\x00")
	if r, err := Check(f, 7, 7); err != nil || r.Verdict != Allow {
		t.Fatalf("after rename: %+v %v", r, err)
	}
	os.Remove(path)
	if _, err := Check(f, 7, 7); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("removed: %v", err)
	}
}

func TestAllowIDs(t *testing.T) {
	testutil.CheckLeaks(t)
	r := AllowIDs([]int{0, 1000}, []int{50})
	for _, c := range []struct {
		uid, gid int
		ok       bool
	}{{0, 0, true}, {1000, 5, true}, {5, 50, true}, {5, 5, false}} {
		res, err := CheckAs(r, c.uid, c.gid, -1, -1)
		if err != nil || res.Allowed() != c.ok {
			t.Errorf("uid %d gid %d: %+v %v, want allowed=%v", c.uid, c.gid, res, err, c.ok)
		}
	}
	if got := r.Keys(); !reflect.DeepEqual(got, []string{"gid/50", "uid/0", "uid/1000"}) {
		t.Errorf("Keys = %v", got)
	}
}

// failingRules fails every lookup.
type failingRules struct{}

func (failingRules) Lookup(string) (Result, error) { return Result{}, ErrMalformed }

// TestDecide: Decide is Check as a Decision; a failed lookup denies.
func TestDecide(t *testing.T) {
	env := []EnvChange{{Name: "ROLE", Value: "x"}}
	rs := Rules{"uid/10": {Verdict: Allow, Env: env, Exec: "prog"}, "uid/11": {Verdict: Deny}}
	for _, tc := range []struct {
		rs   Ruleset
		uid  int
		want Decision
	}{
		{rs, 10, Decision{Allow: true, Reason: "uid/10", Env: env, Exec: "prog"}},
		{rs, 11, Decision{Reason: "uid/11"}},
		{rs, 12, Decision{}},
		{failingRules{}, 10, Decision{Err: ErrMalformed}},
	} {
		got := Decide(tc.rs, tc.uid, 99999)
		if got.Allow != tc.want.Allow || got.Reason != tc.want.Reason || got.Exec != tc.want.Exec ||
			len(got.Env) != len(tc.want.Env) || !errors.Is(got.Err, tc.want.Err) || (tc.want.Err == nil) != (got.Err == nil) {
			t.Errorf("uid %d: %+v, want %+v", tc.uid, got, tc.want)
		}
	}
}
