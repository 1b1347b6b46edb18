// Package lockdown holds the kernel-enforced least privilege of porter's
// processes: Creator sandboxes porter-creator (no new privileges, a
// bounding set of CAP_NET_BIND_SERVICE alone, no file system through
// Landlock, a seccomp allow-list), Drop is the one privilege drop of
// the broker and the ipcserver (empty bounding set, unprivileged ids,
// no new privileges, root not regainable), and SetIDs is Drop's
// id-changing core alone, for `porter run --user`.
//
// Linux keeps all of this per thread and a Go program has several threads
// before main, so every step runs on every thread:
// syscall.AllThreadsSyscall for prctl, capset, setuid and
// landlock_restrict_self, SECCOMP_FILTER_FLAG_TSYNC for the filter. The
// runtime offers AllThreadsSyscall only to binaries without cgo, so
// Creator and Drop fail with ErrCgo in a binary that links cgo: build
// porter and porter-creator with CGO_ENABLED=0. (SetIDs alone works with
// cgo too: Go's setgroups, setresgid and setresuid reach every thread
// either way.)
//
// It uses the standard library and golang.org/x/sys/unix only, so that
// porter-creator may import it.
package lockdown

import (
	"errors"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrCgo is wrapped by the error of a step that must run on every thread
// in a binary that links cgo, where Go cannot do that.
var ErrCgo = errors.New("the binary links cgo, so a per-thread setting cannot reach every thread (build with CGO_ENABLED=0)")

// Error is a lockdown step that failed: Op names it ("prctl
// PR_SET_NO_NEW_PRIVS", "seccomp" ...), Err is the errno or ErrCgo.
type Error struct {
	Op  string
	Err error
}

// Error returns "lockdown: OP: ERR".
func (e *Error) Error() string { return "lockdown: " + e.Op + ": " + e.Err.Error() }

// Unwrap returns Err, so errors.Is(err, unix.EPERM) works.
func (e *Error) Unwrap() error { return e.Err }

// allThreads runs a system call on every thread of the process.
func allThreads(op string, trap, a1, a2, a3 uintptr) error {
	_, _, e := syscall.AllThreadsSyscall(trap, a1, a2, a3)
	switch {
	case e == syscall.ENOTSUP:
		return &Error{op, ErrCgo}
	case e != 0:
		return &Error{op, e}
	}
	return nil
}

// noNewPrivs sets PR_SET_NO_NEW_PRIVS: execve(2) grants no privilege
// (set-id bits and file capabilities are ignored) from now on.
func noNewPrivs() error {
	return allThreads("prctl PR_SET_NO_NEW_PRIVS", unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0)
}

// capSet is a set of capabilities, bit n for capability n.
type capSet uint64

func (s capSet) has(c int) bool { return s&(1<<c) != 0 }

// caps returns the calling thread's effective, permitted and inheritable
// sets (the same on every thread: threads share their credentials until
// one changes its own).
func caps() (eff, prm, inh capSet, err error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var d [2]unix.CapUserData
	if err := unix.Capget(&hdr, &d[0]); err != nil {
		return 0, 0, 0, &Error{"capget", err}
	}
	join := func(lo, hi uint32) capSet { return capSet(lo) | capSet(hi)<<32 }
	return join(d[0].Effective, d[1].Effective), join(d[0].Permitted, d[1].Permitted), join(d[0].Inheritable, d[1].Inheritable), nil
}

// setCaps sets the effective, permitted and inheritable sets of every
// thread. Ambient capabilities outside permitted ∩ inheritable go with
// them (capabilities(7)).
func setCaps(eff, prm, inh capSet) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	d := [2]unix.CapUserData{
		{Effective: uint32(eff), Permitted: uint32(prm), Inheritable: uint32(inh)},
		{Effective: uint32(eff >> 32), Permitted: uint32(prm >> 32), Inheritable: uint32(inh >> 32)},
	}
	// hdr.Pid 0: each thread sets its own.
	return allThreads("capset", unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&d[0])), 0)
}

// dropBounding removes every capability but keep from the bounding set of
// every thread. It needs CAP_SETPCAP.
func dropBounding(keep capSet) error {
	// The kernel knows capabilities 0 .. CAP_LAST_CAP; PR_CAPBSET_READ
	// says EINVAL past the last, which may be newer than x/sys's.
	for c := 0; c < 64; c++ {
		if _, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0); err == unix.EINVAL {
			break
		}
		if keep.has(c) {
			continue
		}
		if err := allThreads("prctl PR_CAPBSET_DROP", unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uintptr(c), 0); err != nil {
			return err
		}
	}
	return nil
}

// Report says what Creator applied.
type Report struct {
	NoNewPrivs bool   // PR_SET_NO_NEW_PRIVS is set
	Bounding   bool   // the bounding set was cut to CAP_NET_BIND_SERVICE (needs CAP_SETPCAP)
	Landlock   int    // the Landlock ABI applied, 0 for none
	NoLandlock string // why not, when Landlock is 0
	Seccomp    bool   // the allow-list filter is installed
	NoSeccomp  string // why not, when Seccomp is false (no allow-list measured for GOARCH)
}

// Creator locks porter-creator down for good, in this order:
//
//  1. PR_SET_NO_NEW_PRIVS;
//  2. with CAP_SETPCAP, the bounding set cut to CAP_NET_BIND_SERVICE;
//  3. the permitted and effective sets cut to CAP_NET_BIND_SERVICE (if it
//     was there), the inheritable and ambient sets emptied (CAP_SETPCAP,
//     given by porter up for step 2, goes);
//  4. Landlock: every file-system right handled and none granted, and
//     signals and abstract Unix sockets scoped to the creator itself;
//  5. the seccomp allow-list (allow_*.go) with TSYNC; anything else kills
//     the process with SIGSYS.
//
// Landlock is a second wall behind seccomp, which already refuses every
// call that opens a path: where the kernel lacks it (or it cannot be set
// up, e.g. no free descriptor for the ruleset) Creator goes on and says
// why in Report.NoLandlock. On an architecture without a measured
// allow-list (only amd64 has one) it installs no filter and says so in
// Report.NoSeccomp. Every other failure is returned, and the
// caller must not serve. Call it after start-up, before the first
// request: afterwards the process cannot open a file, exec, or make a
// socket other than TCP/UDP over IPv4/IPv6.
func Creator() (Report, error) {
	var r Report
	if err := noNewPrivs(); err != nil {
		return r, err
	}
	r.NoNewPrivs = true
	eff, prm, _, err := caps()
	if err != nil {
		return r, err
	}
	keep := capSet(1 << unix.CAP_NET_BIND_SERVICE)
	if eff.has(unix.CAP_SETPCAP) {
		if err := dropBounding(keep); err != nil {
			return r, err
		}
		r.Bounding = true
	}
	if err := setCaps(eff&keep, prm&keep, 0); err != nil {
		return r, err
	}
	abi, err := landlock()
	if err != nil {
		r.NoLandlock = err.Error()
	} else {
		r.Landlock = abi
	}
	if len(allowed) == 0 {
		r.NoSeccomp = "no system call allow-list has been measured for " + runtime.GOARCH
		return r, nil
	}
	if err := seccomp(); err != nil {
		return r, err
	}
	r.Seccomp = true
	return r, nil
}

// Drop gives up privilege for good: while still privileged the bounding
// set is emptied (with CAP_SETPCAP), then SetIDs changes the groups and
// ids and checks that root cannot be regained, then PR_SET_NO_NEW_PRIVS is
// set, all on every thread; and Drop checks that no capability is left.
// uid, gid and groups mean what they mean for SetIDs.
//
// A process that stays root (uid 0, or uid < 0 as root) only changes its
// ids: it keeps root's powers, as s6-applyuidgid leaves them, and it is
// the caller's business whether that is allowed (porter up refuses it).
// Without CAP_SETPCAP the bounding set is left as it is: a process with
// no capability gains none at execve once PR_SET_NO_NEW_PRIVS is set.
func Drop(uid, gid int, groups []int) error {
	staysRoot := uid == 0 || (uid < 0 && os.Geteuid() == 0)
	if !staysRoot {
		eff, _, _, err := caps()
		if err != nil {
			return err
		}
		if eff.has(unix.CAP_SETPCAP) {
			if err := dropBounding(0); err != nil {
				return err
			}
		}
	}
	if err := SetIDs(uid, gid, groups); err != nil {
		return err
	}
	if staysRoot {
		return nil
	}
	if err := noNewPrivs(); err != nil {
		return err
	}
	_, prm, _, err := caps()
	if err != nil {
		return err
	}
	if prm != 0 {
		return &Error{"capget", errors.New("capabilities are left after the drop")}
	}
	return nil
}

// SetIDs changes the ids of the process, on every thread (Go's setgroups,
// setresgid and setresuid reach them all): the supplementary groups to
// groups, then the real, effective and saved gid to gid, then those uids
// to uid. uid or gid < 0 leaves that id as it is; groups nil leaves the
// groups unless uid changes, in which case they are emptied. Unless the
// process ends as root, SetIDs then checks that root cannot be regained
// (setresuid(0, 0, 0) and setuid(0) must fail), so a failed or partial
// change is an error, never a process that only looks unprivileged.
//
// It is the id-changing core of Drop and all that `porter run --user`
// does before exec: it leaves the bounding set and PR_SET_NO_NEW_PRIVS
// alone, so the program it runs may still gain privilege through set-id
// or file-capability executables, as after su or s6-setuidgid.
func SetIDs(uid, gid int, groups []int) error {
	staysRoot := uid == 0 || (uid < 0 && os.Geteuid() == 0)
	if groups != nil || uid >= 0 {
		if groups == nil {
			groups = []int{}
		}
		if err := syscall.Setgroups(groups); err != nil {
			return &Error{"setgroups", err}
		}
	}
	if gid >= 0 {
		if err := syscall.Setresgid(gid, gid, gid); err != nil {
			return &Error{"setresgid", err}
		}
	}
	if uid >= 0 {
		if err := syscall.Setresuid(uid, uid, uid); err != nil {
			return &Error{"setresuid", err}
		}
	}
	if !staysRoot && (syscall.Setresuid(0, 0, 0) == nil || syscall.Setuid(0) == nil) {
		return &Error{"setresuid", errors.New("root could be regained after the drop")}
	}
	return nil
}

// CreatorProcAttr is how a root parent starts porter-creator as uid and
// gid, with no supplementary groups: with CAP_NET_BIND_SERVICE, to bind
// ports below 1024, and CAP_SETPCAP, so that Creator can cut the bounding
// set, both ambient so that they survive execve. Creator drops
// CAP_SETPCAP again before the first request.
func CreatorProcAttr(uid, gid int) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Credential:  &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}},
		AmbientCaps: []uintptr{unix.CAP_NET_BIND_SERVICE, unix.CAP_SETPCAP},
	}
}
