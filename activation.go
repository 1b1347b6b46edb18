package porter

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/porter-ipc/porter/internal/fdutil"
	"golang.org/x/sys/unix"
)

// ListenFDsStart is the first fd of socket activation (SD_LISTEN_FDS_START).
const ListenFDsStart = 3

// Files returns the sockets passed by socket activation (porter run or
// systemd): LISTEN_FDS fds from fd 3, when LISTEN_PID is this process.
// Each file is named after its LISTEN_FDNAMES entry, is made close-on-exec
// and belongs to the caller; its blocking mode is left alone. With
// unsetEnv the three variables are removed, so children do not see them.
//
// The broker connection that porter run passes on (PORTER_BROKER_FD) is
// made close-on-exec too but stays open: it makes this process the holder
// of its sockets, and a child that outlived this process must not keep
// the references. unsetEnv removes PORTER_BROKER_FD as well.
func Files(unsetEnv bool) []*os.File {
	if unsetEnv {
		defer func() {
			os.Unsetenv("LISTEN_PID")
			os.Unsetenv("LISTEN_FDS")
			os.Unsetenv("LISTEN_FDNAMES")
			os.Unsetenv("PORTER_BROKER_FD")
		}()
	}
	pid, err := strconv.Atoi(os.Getenv("LISTEN_PID"))
	if err != nil || pid != os.Getpid() {
		return nil
	}
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n <= 0 {
		return nil
	}
	if bfd, err := strconv.Atoi(os.Getenv("PORTER_BROKER_FD")); err == nil && bfd == ListenFDsStart+n {
		syscall.CloseOnExec(bfd)
	}
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	files := make([]*os.File, 0, n)
	for i := 0; i < n; i++ {
		fd := ListenFDsStart + i
		syscall.CloseOnExec(fd)
		name := "LISTEN_FD_" + strconv.Itoa(fd)
		if i < len(names) && names[i] != "" {
			name = names[i]
		}
		files = append(files, os.NewFile(uintptr(fd), name))
	}
	return files
}

// Listeners returns a *Listener for each activated fd that is a listening
// stream socket, in order, and nil for the others. The activation fds are
// closed (each Listener has its own copy) and the variables unset.
func Listeners() ([]net.Listener, error) {
	files := Files(true)
	out := make([]net.Listener, len(files))
	for i, f := range files {
		if isListening(f) {
			l, err := FileListener(f)
			if err != nil {
				closeAll(files)
				closeListeners(out)
				return nil, activationErr(ListenFDsStart+i, f, err)
			}
			out[i] = l
		}
	}
	closeAll(files)
	return out, nil
}

// ListenersWithNames is Listeners grouped by LISTEN_FDNAMES name.
func ListenersWithNames() (map[string][]net.Listener, error) {
	files := Files(true)
	out := map[string][]net.Listener{}
	defer closeAll(files)
	for i, f := range files {
		if !isListening(f) {
			continue
		}
		l, err := FileListener(f)
		if err != nil {
			for _, ls := range out {
				closeListeners(ls)
			}
			return nil, activationErr(ListenFDsStart+i, f, err)
		}
		out[f.Name()] = append(out[f.Name()], l)
	}
	return out, nil
}

// PacketConns returns a *PacketConn for each activated fd that is a
// datagram socket, in order, and nil for the others. The activation fds
// are closed and the variables unset.
func PacketConns() ([]net.PacketConn, error) {
	files := Files(true)
	defer closeAll(files)
	out := make([]net.PacketConn, len(files))
	for i, f := range files {
		if sockType(f) == unix.SOCK_DGRAM {
			pc, err := FilePacketConn(f)
			if err != nil {
				for _, p := range out {
					if p != nil {
						p.Close()
					}
				}
				return nil, activationErr(ListenFDsStart+i, f, err)
			}
			out[i] = pc
		}
	}
	return out, nil
}

// activationErr adds the activation fd to err, a *net.OpError from
// FileListener or FilePacketConn, which stays the error returned.
func activationErr(fd int, f *os.File, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		e := *oe
		e.Err = fmt.Errorf("activation fd %d (%s): %w", fd, f.Name(), oe.Err)
		return &e
	}
	return fmt.Errorf("porter: activation fd %d (%s): %w", fd, f.Name(), err)
}

func sockType(f *os.File) int {
	t := -1
	fdutil.Control(f, func(fd int) error {
		v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		if err == nil {
			t = v
		}
		return err
	})
	return t
}

func isListening(f *os.File) bool {
	acc := 0
	fdutil.Control(f, func(fd int) (err error) {
		acc, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		return err
	})
	return acc == 1
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

func closeListeners(ls []net.Listener) {
	for _, l := range ls {
		if l != nil {
			l.Close()
		}
	}
}
