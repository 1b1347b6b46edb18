package lockdown

import (
	"errors"
	"os"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Offsets in struct seccomp_data: nr, arch, then the arguments as 64-bit
// values; argLo(i) is the low half of argument i on a little-endian host.
// Every argument checked below is a C int or flags that fit in 32 bits,
// and the kernel reads only those 32 bits, so the high half may be left.
const (
	offNr   = 0
	offArch = 4
)

func argLo(i int) uint32 { return uint32(16 + 8*i) }

const (
	retKill  = unix.SECCOMP_RET_KILL_PROCESS
	retAllow = unix.SECCOMP_RET_ALLOW
)

// insn is one classic BPF instruction whose jumps name labels.
type insn struct {
	label  string // where jumps to this instruction go ("" for none)
	code   uint16
	k      uint32
	jt, jf string // jump targets, "" for the next instruction
}

func ld(off uint32) insn { return insn{code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, k: off} }
func jeq(k uint32, jt, jf string) insn {
	return insn{code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, k: k, jt: jt, jf: jf}
}
func jset(k uint32, jt, jf string) insn {
	return insn{code: unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K, k: k, jt: jt, jf: jf}
}
func and(k uint32) insn        { return insn{code: unix.BPF_ALU | unix.BPF_AND | unix.BPF_K, k: k} }
func ret(k uint32) insn        { return insn{code: unix.BPF_RET | unix.BPF_K, k: k} }
func at(l string, i insn) insn { i.label = l; return i }

// assemble resolves the labels into forward jump offsets. A label may
// stand on several instructions (a shared "kill" or "allow"): a jump goes
// to the next one.
func assemble(prog []insn) ([]unix.SockFilter, error) {
	pos := map[string][]int{}
	for i, in := range prog {
		if in.label != "" {
			pos[in.label] = append(pos[in.label], i)
		}
	}
	out := make([]unix.SockFilter, len(prog))
	for i, in := range prog {
		off := func(l string) (uint8, error) {
			if l == "" {
				return 0, nil
			}
			for _, p := range pos[l] {
				if p > i && p-i-1 <= 255 {
					return uint8(p - i - 1), nil
				}
			}
			return 0, errors.New("no label " + l + " within 255 instructions after " + strconv.Itoa(i))
		}
		jt, err := off(in.jt)
		if err != nil {
			return nil, err
		}
		jf, err := off(in.jf)
		if err != nil {
			return nil, err
		}
		out[i] = unix.SockFilter{Code: in.code, Jt: jt, Jf: jf, K: in.k}
	}
	return out, nil
}

// filter builds the creator's seccomp program: the build's architecture
// only, then the calls of allowed (allow_GOARCH.go) whatever their
// arguments, then a few calls allowed only with the arguments the creator
// and the runtime use; anything else kills the process.
func filter(pid int) ([]unix.SockFilter, error) {
	if auditArch == 0 {
		return nil, errors.New("no system call allow-list for this architecture (measured on amd64 only)")
	}
	p := []insn{
		ld(offArch),
		jeq(auditArch, "", "kill"),
		ld(offNr),
	}
	if archNrLimit != 0 { // amd64: x32 calls share the arch value and set this bit
		p = append(p, insn{code: unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K, k: archNrLimit, jt: "kill"})
	}
	for _, nr := range allowed {
		p = append(p, jeq(uint32(nr), "allow", ""))
	}
	p = append(p,
		jeq(unix.SYS_SOCKET, "socket", ""),
		jeq(unix.SYS_MMAP, "mmap", ""),
		jeq(unix.SYS_CLONE, "clone", ""),
		jeq(unix.SYS_TGKILL, "self", ""),
		jeq(unix.SYS_KILL, "self", ""),
		jeq(unix.SYS_PRCTL, "prctl", ""),
		at("kill", ret(retKill)),
		at("allow", ret(retAllow)),

		// socket(2): the four kinds the creator serves, protocol 0;
		// SOCK_CLOEXEC is the one flag it sets.
		at("socket", ld(argLo(0))),
		jeq(unix.AF_INET, "socket-type", ""),
		jeq(unix.AF_INET6, "socket-type", "kill"),
		at("socket-type", ld(argLo(1))),
		and(^uint32(unix.SOCK_CLOEXEC)),
		jeq(unix.SOCK_STREAM, "socket-proto", ""),
		jeq(unix.SOCK_DGRAM, "socket-proto", "kill"),
		at("socket-proto", ld(argLo(2))),
		jeq(0, "allow", "kill"),

		// mmap(2): heap and stacks, never executable memory.
		at("mmap", ld(argLo(2))),
		jset(unix.PROT_EXEC, "kill", "allow"),

		// clone(2): new threads of this process only (CLONE_THREAD
		// implies CLONE_VM and CLONE_SIGHAND and excludes new
		// namespaces), no new processes.
		at("clone", ld(argLo(0))),
		jset(unix.CLONE_THREAD, "allow", "kill"),

		// kill(2) and tgkill(2): signals to this process only
		// (preemption, and raising a fatal signal on itself).
		at("self", ld(argLo(0))),
		jeq(uint32(pid), "allow", "kill"),

		// prctl(2): naming the runtime's anonymous mappings only.
		at("prctl", ld(argLo(0))),
		jeq(unix.PR_SET_VMA, "allow", "kill"),

		at("kill", ret(retKill)),
		at("allow", ret(retAllow)),
	)
	return assemble(p)
}

// seccomp installs the filter on every thread (TSYNC). It needs
// PR_SET_NO_NEW_PRIVS first.
func seccomp() error {
	f, err := filter(os.Getpid())
	if err != nil {
		return &Error{"seccomp", err}
	}
	prog := unix.SockFprog{Len: uint16(len(f)), Filter: &f[0]}
	r, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&prog)))
	switch {
	case e != 0:
		return &Error{"seccomp", e}
	case r != 0: // the id of a thread that could not be synchronised
		return &Error{"seccomp", errors.New("thread " + strconv.Itoa(int(r)) + " could not take the filter")}
	}
	return nil
}
