package lockdown

import "golang.org/x/sys/unix"

const (
	auditArch   = unix.AUDIT_ARCH_X86_64
	archNrLimit = 0x40000000 // __X32_SYSCALL_BIT
)

// allowed lists the calls porter-creator and the Go runtime make after
// start-up, measured with strace -f under load (thousands of requests,
// GOGC=1 for many collections, SIGURG preemption, signals from outside,
// new threads, exit by signal). socket, mmap, clone, kill, tgkill and
// prctl are allowed by argument in filter.
var allowed = []int{
	// The creator's own work: read requests, send answers and sockets
	// (SCM_RIGHTS), set options, bind, close its copy; poll when the
	// client left the socket non-blocking (unix.Poll is ppoll).
	unix.SYS_READ, unix.SYS_SENDMSG, unix.SYS_SETSOCKOPT, unix.SYS_BIND,
	unix.SYS_CLOSE, unix.SYS_PPOLL, unix.SYS_POLL,
	// Lines on stderr, the runtime's crash report, the netpoller's
	// eventfd wake-up; exit.
	unix.SYS_WRITE, unix.SYS_EXIT_GROUP, unix.SYS_EXIT,
	// The scheduler: threads park and wake, sysmon sleeps, spinning
	// threads yield; the clock when the vDSO is not there.
	unix.SYS_FUTEX, unix.SYS_NANOSLEEP, unix.SYS_SCHED_YIELD, unix.SYS_CLOCK_GETTIME,
	// Memory: the garbage collector's scavenger returns pages, the heap
	// and stacks grow (mmap is checked below).
	unix.SYS_MADVISE, unix.SYS_MUNMAP,
	// Signals: SIGURG preemption and any signal from outside run the
	// runtime's handler; a new thread sets up its signal stack and mask;
	// a fatal signal resets its handler and is raised again; an
	// interrupted sleep restarts.
	unix.SYS_RT_SIGRETURN, unix.SYS_RT_SIGACTION, unix.SYS_RT_SIGPROCMASK,
	unix.SYS_SIGALTSTACK, unix.SYS_GETPID, unix.SYS_GETTID, unix.SYS_RESTART_SYSCALL,
	// GOMAXPROCS kept current (Go 1.25+): CPU affinity, and the cgroup
	// CPU limit re-read with pread on the files opened at start-up.
	unix.SYS_SCHED_GETAFFINITY, unix.SYS_PREAD64,
	// The netpoller, set up lazily for timers: epoll and its eventfd.
	unix.SYS_EPOLL_CREATE1, unix.SYS_EPOLL_CTL, unix.SYS_EPOLL_PWAIT, unix.SYS_EPOLL_PWAIT2, unix.SYS_EVENTFD2,
}
