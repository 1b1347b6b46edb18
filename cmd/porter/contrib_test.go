package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/porter-ipc/porter/internal/testutil"
	"golang.org/x/sys/unix"
)

// The files under contrib/ are what users install; these tests run them
// as they are, with only the install paths substituted. contrib/README.md
// says what each test proves and what was not checked.

// contribPath is a path under contrib/ at the module root.
func contribPath(elem ...string) string {
	return filepath.Join(append([]string{"..", "..", "contrib"}, elem...)...)
}

// installedPorter is where contrib's files expect porter.
const installedPorter = "/usr/local/bin/porter"

// substitute replaces old by new in the lines of text that are not
// comments, failing unless it occurs there exactly once: the tests must
// notice when a file they adapt changes shape.
func substitute(t testing.TB, name, text, old, new string) string {
	t.Helper()
	lines := strings.Split(text, "\n")
	n := 0
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "#") {
			continue
		}
		n += strings.Count(l, old)
		lines[i] = strings.ReplaceAll(l, old, new)
	}
	if n != 1 {
		t.Fatalf("%s: %q occurs %d times outside comments, want once", name, old, n)
	}
	return strings.Join(lines, "\n")
}

// unit is a parsed systemd unit file: "Section.Key" to its value. It
// understands what contrib's unit uses (no line continuations, each key
// set once) and fails on anything else.
type unit map[string]string

func readUnit(t testing.TB, path string) unit {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unit{}
	section := ""
	for i, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || l[0] == '#' || l[0] == ';':
		case strings.HasSuffix(l, "\\"):
			t.Fatalf("%s:%d: line continuations are not understood by this test", path, i+1)
		case l[0] == '[':
			section = strings.Trim(l, "[]")
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: %q is not Key=value in a section", path, i+1, l)
			}
			key := section + "." + k
			if _, dup := u[key]; dup {
				t.Fatalf("%s:%d: %s set twice; this test reads each key once", path, i+1, key)
			}
			u[key] = v
		}
	}
	return u
}

func (u unit) get(t testing.TB, key string) string {
	t.Helper()
	v, ok := u[key]
	if !ok {
		t.Fatalf("porter.service has no %s", key)
	}
	return v
}

// execArgv splits an Exec*= line that uses no quoting, no variables and
// no prefixes, as contrib's ExecStart does.
func execArgv(t testing.TB, line string) []string {
	t.Helper()
	if strings.ContainsAny(line, `"'$%\`) || strings.ContainsAny(line[:1], "-@:+!") {
		t.Fatalf("Exec line %q: quoting, variables, specifiers or prefixes are not understood by this test", line)
	}
	return strings.Fields(line)
}

// unitCopy writes porter.service with ExecStart's porter replaced by the
// one built for the tests, for systemd-analyze (which checks that the
// program exists), and returns its path.
func unitCopy(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(contribPath("systemd", "porter.service"))
	if err != nil {
		t.Fatal(err)
	}
	text := substitute(t, "porter.service", string(b), installedPorter+" ", filepath.Join(binDir, "porter")+" ")
	p := filepath.Join(t.TempDir(), "porter.service")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSystemdUnitVerify: systemd-analyze accepts contrib's unit without
// one warning (it exits 0 on unknown keys and bad values, so its output
// must be empty too), and rates its exposure 3.0 or better.
func TestSystemdUnitVerify(t *testing.T) {
	sa := testutil.RequireProgram(t, "systemd-analyze")
	p := unitCopy(t)
	cmd := exec.Command(sa, "verify", p)
	cmd.Dir = filepath.Dir(p)
	out, err := cmd.CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify porter.service: %v\n%s", err, out)
	}
	// --threshold is in tenths of the 0.0-10.0 scale it prints.
	cmd = exec.Command(sa, "security", "--offline=true", "--threshold=30", "--no-pager", p)
	cmd.Dir = filepath.Dir(p)
	out, err = cmd.CombinedOutput()
	if err != nil {
		t.Errorf("systemd-analyze security: %v, want an exposure level of 3.0 or better:\n%s", err, out)
	}
	if i := strings.LastIndex(string(out), "Overall exposure level"); i >= 0 {
		t.Logf("%s", strings.TrimSpace(string(out[i:])))
	}
}

// How TestSystemdUnitSandbox and TestSystemdUnitSyscalls cover each
// setting of porter.service. A setting missing here fails the tests: a
// new one must be classified (and, where it can be, checked).
var (
	// Applied for real around `porter up` by TestSystemdUnitSandbox.
	unitEmulated = []string{
		"Service.ExecStart", "Service.ExecStartPost", "Service.RuntimeDirectory",
		"Service.CapabilityBoundingSet", "Service.AmbientCapabilities", "Service.SecureBits",
		"Service.NoNewPrivileges", "Service.MemoryDenyWriteExecute",
		"Service.ProtectSystem", "Service.ProtectHome", "Service.ProtectProc",
		"Service.ProcSubset", "Service.UMask",
	}
	// Seccomp-based: TestSystemdUnitSyscalls checks under strace that
	// porter never makes the calls they refuse.
	unitSyscallChecked = []string{
		"Service.SystemCallFilter", "Service.SystemCallErrorNumber",
		"Service.RestrictAddressFamilies", "Service.RestrictNamespaces",
		"Service.LockPersonality", "Service.RestrictRealtime", "Service.RestrictSUIDSGID",
		"Service.SystemCallArchitectures", "Service.ProtectClock",
		"Service.ProtectKernelModules", "Service.ProtectKernelLogs",
		"Service.ProtectHostname", "Service.PrivateDevices",
	}
	// Only parsed by systemd-analyze verify: service management, and
	// mounts porter does not look at (contrib/README.md says why).
	unitVerifiedOnly = []string{
		"Unit.Description", "Unit.Documentation", "Install.WantedBy",
		"Service.Type", "Service.TimeoutStartSec", "Service.Restart", "Service.RestartSec",
		"Service.KillMode", "Service.RuntimeDirectoryMode",
		"Service.PrivateTmp", "Service.PrivateIPC", "Service.ProtectKernelTunables",
		"Service.ProtectControlGroups",
	}
)

func checkUnitClassified(t *testing.T, u unit) {
	t.Helper()
	for k := range u {
		if !slices.Contains(unitEmulated, k) && !slices.Contains(unitSyscallChecked, k) && !slices.Contains(unitVerifiedOnly, k) {
			t.Errorf("porter.service sets %s, which contrib_test.go does not classify: check it and add it to a list", k)
		}
	}
}

// setprivCaps turns CapabilityBoundingSet's "CAP_X CAP_Y" into setpriv's
// "-all,+x,+y", and returns the set as a mask.
func setprivCaps(t testing.TB, list string) (arg string, mask uint64) {
	t.Helper()
	names := map[string]int{
		"CAP_SETUID": unix.CAP_SETUID, "CAP_SETGID": unix.CAP_SETGID,
		"CAP_SETPCAP": unix.CAP_SETPCAP, "CAP_NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE,
		"CAP_CHOWN": unix.CAP_CHOWN, "CAP_DAC_OVERRIDE": unix.CAP_DAC_OVERRIDE,
		"CAP_FOWNER": unix.CAP_FOWNER, "CAP_KILL": unix.CAP_KILL,
	}
	arg = "-all"
	for _, c := range strings.Fields(list) {
		n, ok := names[c]
		if !ok {
			t.Fatalf("CapabilityBoundingSet: %q is not known to this test (an inverted ~ list is not either)", c)
		}
		arg += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
		mask |= 1 << n
	}
	return arg, mask
}

// lowPort returns a port below 1024 free for TCP on 127.0.0.1 now; binding
// it takes CAP_NET_BIND_SERVICE. The test process is root.
func lowPort(t testing.TB) int {
	t.Helper()
	start := 600 + os.Getpid()%300
	for i := 0; i < 424; i++ {
		p := 600 + (start-600+i)%424
		l, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", p))
		if err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("no port below 1024 is free")
	return 0
}

// mdweExec is a python3 program (python3 is a test peer) that sets
// PR_SET_MDWE(PR_MDWE_REFUSE_EXEC_GAIN), the kernel's own form of
// MemoryDenyWriteExecute (systemd uses it where the kernel has it, Linux
// 6.3+), checks it took, and execs its arguments. execve keeps it.
const mdweExec = `import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(0x41, 1, 0, 0, 0) != 0:
    sys.exit("PR_SET_MDWE: errno %d (Linux 6.3 or later needed)" % ctypes.get_errno())
if libc.prctl(0x42, 0, 0, 0, 0) != 1:
    sys.exit("PR_GET_MDWE does not say PR_MDWE_REFUSE_EXEC_GAIN")
os.execvp(sys.argv[1], sys.argv[1:])
`

// sandboxMounts runs in a new mount namespace (unshare) as root: the
// runtime directory ($1) stays writable, the rest of / is read-only
// (ProtectSystem=strict), /home and /root are empty and unreadable
// (ProtectHome=yes), /proc hides other users' processes and everything
// but them (ProtectProc=invisible, ProcSubset=pid), umask 077 (UMask=).
const sandboxMounts = `set -e
rt=$1; shift
mount --bind "$rt" "$rt"
mount -o remount,bind,ro /
for d in /home /root; do [ ! -d $d ] || mount -t tmpfs -o ro,mode=000 tmpfs $d; done
mount -t proc -o hidepid=invisible,subset=pid proc /proc
umask 077
exec "$@"
`

// TestSystemdUnitSandbox runs porter.service's ExecStart (with --dir and
// --rules added) under what can be had without systemd: its
// CapabilityBoundingSet and no inheritable or ambient capabilities
// (setpriv), NoNewPrivileges, MemoryDenyWriteExecute (PR_SET_MDWE), a
// read-only / apart from the runtime directory, hidden homes, a /proc
// with only visible processes. porter up must start its creator, drop to
// nobody, and hand a port below 1024 to nobody; ExecStartPost must
// return once the control socket is there.
func TestSystemdUnitSandbox(t *testing.T) {
	testutil.RequireRoot(t)
	setpriv := testutil.RequireProgram(t, "setpriv")
	unshare := testutil.RequireProgram(t, "unshare")
	python := programOutsideHomes(t, "python3")
	testutil.CheckLeaks(t)
	u := readUnit(t, contribPath("systemd", "porter.service"))
	checkUnitClassified(t, u)
	for k, want := range map[string]string{
		"Service.NoNewPrivileges": "yes", "Service.MemoryDenyWriteExecute": "yes",
		"Service.AmbientCapabilities": "", "Service.SecureBits": "",
		"Service.ProtectSystem": "strict", "Service.ProtectHome": "yes",
		"Service.ProtectProc": "invisible", "Service.ProcSubset": "pid",
		"Service.UMask": "0077", "Service.RuntimeDirectory": "porter",
	} {
		if got := u.get(t, k); got != want {
			t.Fatalf("porter.service: %s=%s; this test emulates %s=%s only", k, got, k, want)
		}
	}
	bset, mask := setprivCaps(t, u.get(t, "Service.CapabilityBoundingSet"))
	argv := execArgv(t, u.get(t, "Service.ExecStart"))
	if argv[0] != installedPorter {
		t.Fatalf("ExecStart runs %s, want %s", argv[0], installedPorter)
	}
	argv[0] = filepath.Join(binDir, "porter")

	rt := filepath.Join(testutil.SharedDir(t), "porter") // /run/porter
	if err := os.Mkdir(rt, 0o755); err != nil {          // RuntimeDirectoryMode
		t.Fatal(err)
	}
	port := lowPort(t)
	rules := filepath.Join(filepath.Dir(rt), "rules")
	if err := os.WriteFile(rules, []byte(fmt.Sprintf("allow uid=nobody proto=tcp port=%d\n", port)), 0o600); err != nil {
		t.Fatal(err)
	}
	argv = append(argv, "--dir", rt, "--rules", rules)

	args := []string{"--mount", "--propagation", "private", "--", "/bin/sh", "-c", sandboxMounts, "sh", rt,
		python, "-I", "-B", "-c", mdweExec,
		setpriv, "--bounding-set", bset, "--inh-caps", "-all", "--ambient-caps", "-all", "--no-new-privs", "--"}
	d := &daemon{dir: rt, sock: filepath.Join(rt, "porter.sock"), stderr: newSyncBuffer()}
	d.cmd = exec.Command(unshare, append(args, argv...)...)
	d.cmd.Stdout, d.cmd.Stderr = d.stderr, d.stderr
	d.cmd.WaitDelay = 5 * time.Second // should the creator outlive porter up
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		d.stop(t)
		if t.Failed() {
			t.Logf("porter up under the unit's sandbox:\n%s", d.stderr.String())
		}
	}()

	// ExecStartPost, with /run/porter where the runtime directory is.
	post := u.get(t, "Service.ExecStartPost")
	post = substitute(t, "ExecStartPost", post, "/run/porter/", rt+"/")
	postArgv, err := shellWords(post)
	if err != nil {
		t.Fatalf("ExecStartPost: %v", err)
	}
	// As systemd does, give up on ExecStartPost when porter up dies.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	postDone := make(chan error, 1)
	go func() { postDone <- exec.CommandContext(ctx, postArgv[0], postArgv[1:]...).Run() }()
	var postErr error
	waitFor(t, "ExecStartPost to return", func() bool {
		select {
		case postErr = <-postDone:
			return true
		default:
		}
		if st := procState(d.cmd.Process.Pid); st == "Z" || st == "" {
			cancel()
			postErr = <-postDone
			t.Fatalf("porter up died under the unit's sandbox before its socket appeared")
		}
		return false
	})
	if postErr != nil {
		t.Fatalf("ExecStartPost %q: %v", post, postErr)
	}
	if _, err := os.Stat(d.sock); err != nil {
		t.Fatalf("ExecStartPost returned, but: %v", err)
	}
	waitFor(t, "porter up to serve", func() bool { return strings.Contains(d.stderr.String(), upServing) })

	pid := d.cmd.Process.Pid
	uid, gid := testutil.Nobody(t)
	nobody := strings.TrimSpace(strings.Repeat(strconv.Itoa(uid)+" ", 4))
	if got := procStatus(t, pid, "Uid"); got != nobody {
		t.Errorf("porter up Uid: %s, want %s", got, nobody)
	}
	cpid := testutil.OnlyChild(t, pid)
	// The creator locks itself down before its first request, maybe after
	// porter up says it serves (seen: CapEff 0x500, CAP_SETPCAP not yet
	// dropped, once under load).
	waitFor(t, "the creator's lockdown", func() bool { return procStatus(t, cpid, "Seccomp") == "2" })
	for _, p := range []struct {
		name string
		pid  int
		eff  string
	}{{"porter up", pid, "0000000000000000"}, {"creator", cpid, "0000000000000400"}} {
		if got := procStatus(t, p.pid, "NoNewPrivs"); got != "1" {
			t.Errorf("%s NoNewPrivs: %s, want 1 (the unit's NoNewPrivileges)", p.name, got)
		}
		if got := procStatus(t, p.pid, "CapEff"); got != p.eff {
			t.Errorf("%s CapEff: %s, want %s", p.name, got, p.eff)
		}
		bnd, err := strconv.ParseUint(procStatus(t, p.pid, "CapBnd"), 16, 64)
		if err != nil || bnd&^mask != 0 {
			t.Errorf("%s CapBnd: %x %v, want within the unit's %x", p.name, bnd, err, mask)
		}
	}

	url := fmt.Sprintf("tcp://127.0.0.1:%d", port)
	out, err := d.porterCmd(uid, gid, "run", "--listen", url, "--", "/bin/sh", "-c", "echo got $LISTEN_FDS").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "got 1" {
		t.Errorf("nobody asking for %s (a rule allows it): %v %q, want the socket", url, err, out)
	}
	if out, err := d.porterCmd(-1, -1, "ls").CombinedOutput(); err != nil {
		t.Errorf("porter ls: %v %s", err, out)
	}

	d.cmd.Process.Signal(syscall.SIGTERM)
	if code := waitExit(t, d); code != 0 {
		t.Errorf("porter up exited %d on SIGTERM, want 0", code)
	}
	waitFor(t, "the creator to exit", func() bool { return syscall.Kill(cpid, 0) == unix.ESRCH })
}

// shellWords splits a systemd Exec line with single-quoted words, the
// only quoting contrib's ExecStartPost uses.
func shellWords(s string) ([]string, error) {
	var out []string
	for s = strings.TrimSpace(s); s != ""; s = strings.TrimSpace(s) {
		if s[0] == '\'' {
			end := strings.IndexByte(s[1:], '\'')
			if end < 0 {
				return nil, fmt.Errorf("unterminated quote in %q", s)
			}
			out = append(out, s[1:end+1])
			s = s[end+2:]
			continue
		}
		end := strings.IndexAny(s, " \t")
		if end < 0 {
			end = len(s)
		}
		w := s[:end]
		if strings.ContainsAny(w, `"'$%\`) {
			return nil, fmt.Errorf("%q: only plain and single-quoted words are understood", w)
		}
		out = append(out, w)
		s = s[end:]
	}
	if len(out) == 0 {
		return nil, errors.New("empty command")
	}
	return out, nil
}

// programOutsideHomes finds name in $PATH outside /root and /home, which
// the ProtectHome emulation hides.
func programOutsideHomes(t testing.TB, name string) string {
	t.Helper()
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		if dir == "" || strings.HasPrefix(dir, "/root") || strings.HasPrefix(dir, "/home") {
			continue
		}
		if p, err := exec.LookPath(filepath.Join(dir, name)); err == nil {
			return p
		}
	}
	t.Fatalf("NEEDS PEER: %s is not installed outside /root and /home (CI installs it; see scripts/install-deps)", name)
	return ""
}

// syscallGroup expands a systemd system call group (@mount) with
// systemd-analyze's own list of it.
func syscallGroup(t testing.TB, sa, group string) []string {
	t.Helper()
	out, err := exec.Command(sa, "syscall-filter", "--no-pager", group).Output()
	if err != nil {
		t.Fatalf("systemd-analyze syscall-filter %s: %v", group, err)
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || strings.HasPrefix(l, "#") || l == group:
		case strings.HasPrefix(l, "@"):
			names = append(names, syscallGroup(t, sa, l)...)
		default:
			names = append(names, l)
		}
	}
	if len(names) == 0 {
		t.Fatalf("systemd-analyze syscall-filter %s: no system calls in %q", group, out)
	}
	return names
}

var straceLine = regexp.MustCompile(`^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)(\(| resumed>)`)

// TestSystemdUnitSyscalls runs porter up (as root, --exit-on-creator-loss
// as ExecStart has it) under strace -f while nobody gets TCP and UDP
// sockets over IPv4 and IPv6, one below 1024, porter ls lists them, the
// creator is killed and porter up exits 3; then it checks every system
// call porter up and its creator made against the seccomp-based settings
// of porter.service: none in SystemCallFilter's deny list or the groups
// ProtectClock, ProtectKernelModules/Logs, ProtectHostname and
// PrivateDevices deny, socket families only from RestrictAddressFamilies,
// no namespaces, personality changes, realtime scheduling, set-uid
// modes, writable+executable memory, or non-native system calls. It sees
// the paths this flow takes, not every path; contrib/README.md says so.
func TestSystemdUnitSyscalls(t *testing.T) {
	testutil.CheckLeaks(t)
	testutil.RequireRoot(t)
	strace := testutil.RequireProgram(t, "strace")
	sa := testutil.RequireProgram(t, "systemd-analyze")
	u := readUnit(t, contribPath("systemd", "porter.service"))
	checkUnitClassified(t, u)

	deny := map[string]string{} // system call -> the setting that denies it
	filter := u.get(t, "Service.SystemCallFilter")
	if !strings.HasPrefix(filter, "~") {
		t.Fatalf("SystemCallFilter=%s: this test checks a deny list (~...) only", filter)
	}
	for _, g := range strings.Fields(strings.TrimPrefix(filter, "~")) {
		names := []string{g}
		if strings.HasPrefix(g, "@") {
			names = syscallGroup(t, sa, g)
		}
		for _, n := range names {
			deny[n] = "SystemCallFilter " + g
		}
	}
	// What the other settings deny by seccomp (systemd.exec(5)).
	for setting, groups := range map[string][]string{
		"Service.ProtectClock":         {"@clock"},
		"Service.ProtectKernelModules": {"@module"},
		"Service.PrivateDevices":       {"@raw-io"},
		"Service.ProtectKernelLogs":    {"syslog"},
		"Service.ProtectHostname":      {"sethostname", "setdomainname"},
		"Service.RestrictNamespaces":   {"unshare", "setns"},
	} {
		if u.get(t, setting) != "yes" {
			t.Fatalf("porter.service: %s is not yes; this test checks it as yes", setting)
		}
		for _, g := range groups {
			names := []string{g}
			if strings.HasPrefix(g, "@") {
				names = syscallGroup(t, sa, g)
			}
			for _, n := range names {
				deny[n] = setting
			}
		}
	}
	families := strings.Fields(u.get(t, "Service.RestrictAddressFamilies"))
	for k, want := range map[string]string{
		"Service.LockPersonality": "yes", "Service.RestrictRealtime": "yes",
		"Service.RestrictSUIDSGID": "yes", "Service.SystemCallArchitectures": "native",
		"Service.MemoryDenyWriteExecute": "yes", "Service.SystemCallErrorNumber": "EPERM",
	} {
		if got := u.get(t, k); got != want {
			t.Fatalf("porter.service: %s=%s; this test checks %s", k, got, want)
		}
	}
	argv := execArgv(t, u.get(t, "Service.ExecStart"))
	if !slices.Contains(argv, "--exit-on-creator-loss") {
		t.Fatalf("ExecStart %q: no --exit-on-creator-loss", argv)
	}

	dir := testutil.SharedDir(t)
	low, high := lowPort(t), freePort(t)
	rules := filepath.Join(dir, "rules")
	if err := os.WriteFile(rules, []byte(fmt.Sprintf("allow uid=nobody port=%d,%d\n", low, high)), 0o644); err != nil {
		t.Fatal(err)
	}
	trace := filepath.Join(t.TempDir(), "trace")
	d := &daemon{dir: dir, sock: filepath.Join(dir, "porter.sock"), stderr: newSyncBuffer()}
	d.cmd = exec.Command(strace, append([]string{"-f", "-qq", "-o", trace, "--",
		filepath.Join(binDir, "porter")}, append(argv[1:], "--dir", dir, "--rules", rules)...)...)
	d.cmd.Stderr = d.stderr
	// SIGTERM makes strace detach and exit, leaving porter up (and the
	// stderr pipe) behind: porter up, strace's child, is stopped below.
	d.cmd.WaitDelay = 5 * time.Second
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ppid := -1
	defer func() {
		if ppid > 0 && syscall.Kill(ppid, syscall.SIGKILL) == nil {
			t.Errorf("porter up (pid %d) was still running under strace; killed", ppid)
		}
		d.stop(t)
		if t.Failed() {
			t.Logf("porter up under strace:\n%s", d.stderr.String())
		}
	}()
	waitFor(t, "porter up to serve", func() bool { return strings.Contains(d.stderr.String(), upServing) })
	ppid = testutil.OnlyChild(t, d.cmd.Process.Pid)

	uid, gid := testutil.Nobody(t)
	urls := []string{
		fmt.Sprintf("tcp://127.0.0.1:%d", low), fmt.Sprintf("udp://127.0.0.1:%d", low),
		fmt.Sprintf("tcp://[::1]:%d", high), fmt.Sprintf("udp://[::1]:%d", high),
	}
	run := []string{"run"}
	for _, u := range urls {
		run = append(run, "--listen", u)
	}
	run = append(run, "--", "/bin/sh", "-c", "echo got $LISTEN_FDS")
	if out, err := d.porterCmd(uid, gid, run...).CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "got 4" {
		t.Fatalf("porter run %v: %v %q, want 4 sockets", urls, err, out)
	}
	if out, err := d.porterCmd(-1, -1, "ls").CombinedOutput(); err != nil {
		t.Fatalf("porter ls: %v %s", err, out)
	}
	cpid := testutil.OnlyChild(t, ppid)
	if err := syscall.Kill(cpid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code := waitExit(t, d); code != 3 {
		t.Fatalf("porter up under strace exited %d after its creator was killed, want 3", code)
	}
	ppid = -1 // gone with strace, which exits with its status

	f, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, l := range strings.Split(string(f), "\n") {
		if l == "" || strings.Contains(l, "+++ ") || strings.Contains(l, "--- SIG") {
			continue
		}
		if strings.Contains(l, "runs in") && strings.Contains(l, "mode") {
			t.Errorf("non-native system calls (SystemCallArchitectures=native): %s", l)
			continue
		}
		m := straceLine.FindStringSubmatch(l)
		if m == nil {
			t.Errorf("strace line not understood: %q", l)
			continue
		}
		name := m[1]
		if m[2] != "(" {
			continue // "<... name resumed>": its start was checked
		}
		seen[name]++
		if s, ok := deny[name]; ok {
			t.Errorf("%s denies %s, which porter called: %s", s, name, l)
		}
		switch name {
		case "socket", "socketpair":
			fam, _, _ := strings.Cut(l[strings.Index(l, "(")+1:], ",")
			if !slices.Contains(families, fam) {
				t.Errorf("RestrictAddressFamilies=%s refuses %s: %s", strings.Join(families, " "), fam, l)
			}
		case "clone", "clone3":
			if strings.Contains(l, "CLONE_NEW") {
				t.Errorf("RestrictNamespaces refuses a new namespace: %s", l)
			}
		case "personality":
			if !strings.Contains(l, "(0xffffffff)") {
				t.Errorf("LockPersonality refuses a personality change: %s", l)
			}
		case "sched_setscheduler", "sched_setattr":
			if strings.Contains(l, "SCHED_FIFO") || strings.Contains(l, "SCHED_RR") || strings.Contains(l, "SCHED_DEADLINE") {
				t.Errorf("RestrictRealtime refuses: %s", l)
			}
		case "chmod", "fchmod", "fchmodat", "fchmodat2":
			if strings.Contains(l, "S_ISUID") || strings.Contains(l, "S_ISGID") || regexp.MustCompile(`, 0?[2467][0-7]{3}\)`).MatchString(l) {
				t.Errorf("RestrictSUIDSGID refuses a set-uid/set-gid mode: %s", l)
			}
		case "mmap", "mprotect", "pkey_mprotect":
			if strings.Contains(l, "PROT_WRITE|PROT_EXEC") {
				t.Errorf("MemoryDenyWriteExecute refuses writable and executable memory: %s", l)
			}
		}
	}
	for _, want := range []string{"execve", "socket", "bind", "setresuid", "sendmsg", "recvmsg"} {
		if seen[want] == 0 {
			t.Errorf("no %s in the trace: the trace misses what porter did (%d calls seen)", want, len(seen))
		}
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	slices.Sort(names)
	t.Logf("%d distinct system calls checked: %s", len(seen), strings.Join(names, " "))
}

// s6Scan is s6-svscan supervising a copy of contrib/s6/porter.
type s6Scan struct {
	base   string // everything below is in here
	scan   string // the scan directory
	svc    string // scan/porter
	sock   string // porter up's control socket
	logDir string // s6-log's directory
	cmd    *exec.Cmd
	out    *os.File // s6-svscan's stdout and stderr
}

// startS6 copies contrib/s6/porter into a new scan directory, with the
// test's porter, a --dir of its own, the log as nobody in a directory of
// its own, and starts s6-svscan on it as root with env. Everything it
// started is gone when the test ends.
func startS6(t *testing.T, env []string) *s6Scan {
	t.Helper()
	testutil.RequireRoot(t)
	for _, p := range []string{"s6-svscan", "s6-svscanctl", "s6-supervise", "s6-svc", "s6-svwait", "s6-svstat", "s6-permafailon", "s6-log", "s6-setuidgid"} {
		testutil.RequireProgram(t, p)
	}
	base := testutil.SharedDir(t)
	s := &s6Scan{base: base, scan: filepath.Join(base, "scan"), logDir: filepath.Join(base, "log")}
	s.svc = filepath.Join(s.scan, "porter")
	s.sock = filepath.Join(base, "run", "porter.sock")
	src := contribPath("s6", "porter")
	err := filepath.WalkDir(src, func(p string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		dst := filepath.Join(s.svc, rel)
		st, err := e.Info()
		if err != nil {
			return err
		}
		if e.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		switch rel {
		case "run":
			b = []byte(substitute(t, "s6/porter/run", string(b), installedPorter+" up",
				filepath.Join(binDir, "porter")+" up --dir "+filepath.Dir(s.sock)))
		case "log/run":
			b = []byte(substitute(t, "s6/porter/log/run", string(b), "porterlog", "nobody"))
			b = []byte(substitute(t, "s6/porter/log/run", string(b), "/var/log/porter", s.logDir))
		}
		return os.WriteFile(dst, b, st.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
	uid, gid := testutil.Nobody(t)
	if err := os.Mkdir(s.logDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(s.logDir, uid, gid); err != nil {
		t.Fatal(err)
	}
	if s.out, err = os.Create(filepath.Join(base, "svscan.out")); err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command("s6-svscan", s.scan)
	s.cmd.Stdout, s.cmd.Stderr, s.cmd.Env = s.out, s.out, env
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.stop(t)
		s.out.Close()
		if t.Failed() {
			b, _ := os.ReadFile(s.out.Name())
			t.Logf("s6-svscan's output:\n%s", b)
			// s6-log archives current as @TAI64N.s when it stops.
			files, _ := filepath.Glob(filepath.Join(s.logDir, "@*"))
			for _, f := range append(files, filepath.Join(s.logDir, "current")) {
				l, _ := os.ReadFile(f)
				t.Logf("porter's log, s6-log's %s:\n%s", filepath.Base(f), l)
			}
		}
	})
	// s6-svok succeeds once s6-supervise holds its lock, a moment before
	// s6-svstat can read the status it writes.
	waitFor(t, "s6-supervise to run (s6-svstat)", func() bool { return exec.Command("s6-svstat", s.svc).Run() == nil })
	return s
}

// stop tells s6-svscan to bring everything down and exit, waits for it,
// and fails the test if any process it started is left; it kills those.
// It is idempotent.
func (s *s6Scan) stop(t *testing.T) {
	t.Helper()
	if s.cmd.ProcessState == nil {
		if out, err := exec.Command("s6-svscanctl", "-t", s.scan).CombinedOutput(); err != nil {
			t.Errorf("s6-svscanctl -t: %v %s", err, out)
		}
		done := make(chan struct{})
		go func() { s.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			s.cmd.Process.Kill()
			<-done
			t.Errorf("s6-svscan did not exit within 10s of s6-svscanctl -t")
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for left := processesIn(s.scan); len(left) > 0; left = processesIn(s.scan) {
		if time.Now().After(deadline) {
			t.Errorf("processes left 10s after s6-svscan exited: %v", left)
			for pid := range left {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// processesIn returns the live processes whose working directory is dir
// or below it (s6-supervise, and what it runs, work in the service
// directory), with their command names.
func processesIn(dir string) map[int]string {
	m := map[int]string{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
		if err != nil || (cwd != dir && !strings.HasPrefix(cwd, dir+"/")) || procState(pid) == "Z" {
			continue
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		m[pid] = strings.TrimSpace(string(comm))
	}
	return m
}

// svstat returns s6-svstat -o fields for the service.
func (s *s6Scan) svstat(t testing.TB, fields string) string {
	t.Helper()
	out, err := exec.Command("s6-svstat", "-o", fields, s.svc).Output()
	if err != nil {
		t.Fatalf("s6-svstat -o %s: %v", fields, err)
	}
	return strings.TrimSpace(string(out))
}

// pid is porter up's pid as s6-supervise knows it, or -1 while it is down.
func (s *s6Scan) pid(t testing.TB) int {
	t.Helper()
	pid, err := strconv.Atoi(s.svstat(t, "pid"))
	if err != nil {
		t.Fatalf("s6-svstat -o pid: %v", err)
	}
	return pid
}

// log returns what s6-log has written so far, archived files first.
func (s *s6Scan) log() string {
	files, _ := filepath.Glob(filepath.Join(s.logDir, "@*"))
	var all []byte
	for _, f := range append(files, filepath.Join(s.logDir, "current")) {
		b, _ := os.ReadFile(f)
		all = append(all, b...)
	}
	return string(all)
}

// ls runs porter ls --json against the supervised broker.
func (s *s6Scan) ls() (lsJSON, error) {
	var l lsJSON
	cmd := exec.Command(filepath.Join(binDir, "porter"), "ls", "--json")
	cmd.Env = append(os.Environ(), "PORTER_SOCKET="+s.sock)
	out, err := cmd.Output()
	if err == nil {
		err = json.Unmarshal(out, &l)
	}
	return l, err
}

// TestS6Service runs contrib/s6/porter under s6-svscan as root: porter up
// serves (porter ls works, it runs as nobody, its log reaches s6-log as
// nobody); kill -9 of its creator makes it exit 3 and s6 start a new one
// that serves with a new creator; s6-svc -d stops it and removes its
// socket; s6-svscanctl -t leaves no process behind.
func TestS6Service(t *testing.T) {
	testutil.CheckLeaks(t)
	s := startS6(t, os.Environ())
	waitFor(t, "porter ls against the supervised porter up", func() bool { _, err := s.ls(); return err == nil })
	pid := s.pid(t)
	uid, _ := testutil.Nobody(t)
	if got, want := procStatus(t, pid, "Uid"), strings.TrimSpace(strings.Repeat(strconv.Itoa(uid)+" ", 4)); got != want {
		t.Errorf("supervised porter up Uid: %s, want %s", got, want)
	}
	waitFor(t, "porter's log in s6-log's directory", func() bool { return strings.Contains(s.log(), "porter up: serving") })
	st, err := os.Stat(filepath.Join(s.logDir, "current"))
	if err != nil || st.Sys().(*syscall.Stat_t).Uid != uint32(uid) {
		t.Errorf("s6-log's current: %v, want it written by nobody", err)
	}

	if err := syscall.Kill(testutil.OnlyChild(t, pid), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var restarted int
	waitFor(t, "s6 to restart porter up, serving with a new creator", func() bool {
		restarted = s.pid(t)
		if restarted <= 0 || restarted == pid {
			return false
		}
		l, err := s.ls()
		return err == nil && !l.CreatorGone
	})
	waitFor(t, "./finish to log why porter up exited", func() bool {
		return strings.Contains(s.log(), "porter finish: the socket creator died")
	})
	if !strings.Contains(s.log(), "--exit-on-creator-loss") {
		t.Errorf("porter up's log does not say it exited for --exit-on-creator-loss")
	}
	creator := testutil.OnlyChild(t, restarted)

	if out, err := exec.Command("s6-svc", "-d", s.svc).CombinedOutput(); err != nil {
		t.Fatalf("s6-svc -d: %v %s", err, out)
	}
	if out, err := exec.Command("s6-svwait", "-D", "-t", "10000", s.svc).CombinedOutput(); err != nil {
		t.Fatalf("s6-svwait -D: %v %s (porter up did not stop within 10s)", err, out)
	}
	if got := s.svstat(t, "up,wantedup,exitcode"); got != "false false 0" {
		t.Errorf("after s6-svc -d: up, wantedup, exitcode = %s, want false false 0", got)
	}
	for _, p := range []int{restarted, creator} {
		waitFor(t, fmt.Sprintf("pid %d to be gone", p), func() bool { return syscall.Kill(p, 0) == unix.ESRCH })
	}
	if _, err := os.Lstat(s.sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("porter up stopped by s6-svc -d left its control socket: %v (porter up runs as nobody by then, in a directory root made)", err)
	}
	s.stop(t)
}

// TestS6FinishGivesUp: a porter up that cannot start (here: no
// porter-creator where PORTER_CREATOR says) is restarted by s6 four
// times, then ./finish's s6-permafailon stops the loop: the service stays
// down and not wanted up, with one line from ./finish per failure.
func TestS6FinishGivesUp(t *testing.T) {
	testutil.CheckLeaks(t)
	s := startS6(t, append(os.Environ(), "PORTER_CREATOR=/nonexistent/porter-creator"))
	// s6-supervise waits a second between quick restarts: about 5 s.
	deadline := time.Now().Add(30 * time.Second)
	for s.svstat(t, "up,wantedup") != "false false" {
		if time.Now().After(deadline) {
			t.Fatalf("after 30s the failing service is still wanted up: %s", s.svstat(t, "up,wantedup,exitcode"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitFor(t, "./finish's 5 lines in the log", func() bool {
		return strings.Count(s.log(), "porter finish: porter up exited with status 1") >= 5
	})
	if n := strings.Count(s.log(), "porter finish: porter up exited with status 1"); n != 5 {
		t.Errorf("./finish logged %d failures, want 5 (s6-permafailon 60 5)", n)
	}
	if !strings.Contains(s.log(), "porter-creator") {
		t.Errorf("porter up's own error is not in the log")
	}
	s.stop(t)
}
