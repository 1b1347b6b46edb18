package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/porter-ipc/porter"
	"github.com/porter-ipc/porter/internal/testutil"
)

// soakEnv, when set to a duration, makes TestSoakRestart the long soak
// (make soak): restarts go on for that long.
const soakEnv = "PORTER_SOAK"

const soakChild = "soak-http"

func init() { testutil.RegisterChild(soakChild, childSoakHTTP) }

// TestSoakRestart: an HTTP server behind porter run and porter up
// --linger, on 127.0.0.1 and ::1, is restarted again and again while
// clients send requests, each on a new connection, without pause. Not
// one request may fail. Two servers: a Go program taking its listeners
// from socket activation (porter.Listeners), and lighttpd from Debian
// (server.systemd-socket-activation, graceful stop on SIGINT). Restarts
// alternate between two ways:
//
//   - stop, then start: the old instance stops gracefully (it stops
//     accepting, answers what it accepted, exits); porter ls shows the
//     sockets lingering with no holder while every client waits on a
//     connection queued in the backlog; the new instance gets the same
//     sockets and answers them.
//   - start, then stop: the new instance shares the sockets (same --app)
//     with the old one, which then stops gracefully.
//
// Each instance answers a number of requests before the next restart.
// The short version (4 restarts of each server) runs in the suite; with
// PORTER_SOAK=5m (make soak) each server is restarted for that long, with
// a progress line every 10 seconds.
func TestSoakRestart(t *testing.T) {
	testutil.CheckLeaks(t)
	var long time.Duration
	if v := os.Getenv(soakEnv); v != "" {
		var err error
		if long, err = time.ParseDuration(v); err != nil || long <= 0 {
			t.Fatalf("$%s=%q: want a duration such as 60s or 5m", soakEnv, v)
		}
	}
	d := up(t, "", "--linger", "30s")
	uid, gid := testutil.Nobody(t)

	t.Run("go", func(t *testing.T) {
		bin := testutil.WorldExecutable(t)
		soak(t, d, long, func(t *testing.T, port, gen int) *soakServer {
			s := startSoakServer(t, d, uid, gid, port, syscall.SIGTERM, func(cmd *exec.Cmd) {
				cmd.Env = append(cmd.Env, testutil.ChildEnv+"="+soakChild)
			}, bin, "-test.run=^$")
			s.id = strconv.Itoa(s.cmd.Process.Pid) // it answers its pid
			return s
		})
	})

	t.Run("lighttpd", func(t *testing.T) {
		bin := "/usr/sbin/lighttpd"
		if _, err := os.Stat(bin); err != nil {
			bin = testutil.RequireProgram(t, "lighttpd")
		}
		dir := testutil.SharedDir(t)
		soak(t, d, long, func(t *testing.T, port, gen int) *soakServer {
			// Each instance serves its own document root, which says
			// which instance answered.
			root := filepath.Join(dir, strconv.Itoa(gen))
			conf := root + ".conf"
			if err := os.Mkdir(root, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(root, "index.html"), []byte(strconv.Itoa(gen)+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(conf, []byte(fmt.Sprintf(`server.document-root = %q
server.bind = "127.0.0.1"
server.port = %d
$SERVER["socket"] == "[::1]:%d" { }
server.systemd-socket-activation = "enable"
index-file.names = ("index.html")
`, root, port, port)), 0o644); err != nil {
				t.Fatal(err)
			}
			s := startSoakServer(t, d, uid, gid, port, syscall.SIGINT, nil, bin, "-D", "-f", conf)
			s.id = strconv.Itoa(gen)
			return s
		})
	})
}

// soak runs the restart loop for one server: start(t, port, gen) starts
// instance gen (0, 1, ...) on port and returns once it holds its sockets.
func soak(t *testing.T, d *daemon, long time.Duration, start func(t *testing.T, port, gen int) *soakServer) {
	const (
		clients       = 4
		shortRestarts = 4
	)
	perInstance := int64(50) // requests each instance answers before the next restart
	if long > 0 {
		perInstance = 500
	}
	port := freePort(t)
	addrs := []string{fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("[::1]:%d", port)}

	var (
		ok, failed, inflight atomic.Int64
		mu                   sync.Mutex
		errs                 []string
		served               = map[string]int64{} // instance id -> answers
	)
	waitServed := func(s *soakServer) {
		t.Helper()
		waitLong(t, 2*time.Minute, fmt.Sprintf("instance %s to answer %d requests", s.id, perInstance), func() bool {
			mu.Lock()
			defer mu.Unlock()
			return served[s.id] >= perInstance
		}, s.log)
	}
	// The first instance creates the sockets; clients start once it
	// holds them (before, a connection is refused: there is no socket).
	gen := 0
	cur := start(t, port, gen)
	began := time.Now()
	hc := &http.Client{Timeout: time.Minute, Transport: &http.Transport{DisableKeepAlives: true}}
	defer hc.CloseIdleConnections()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				url := "http://" + addrs[(i+n)%len(addrs)] + "/"
				inflight.Add(1)
				id, err := soakGet(hc, url)
				inflight.Add(-1)
				mu.Lock()
				if err != nil {
					failed.Add(1)
					if len(errs) < 10 {
						errs = append(errs, fmt.Sprintf("%s %s: %v", time.Now().Format("15:04:05.000"), url, err))
					}
				} else {
					ok.Add(1)
					served[id]++
				}
				mu.Unlock()
			}
		}()
	}
	stopClients := func() {
		select {
		case <-stop:
		default:
			close(stop)
			wg.Wait()
		}
	}
	defer stopClients()

	lingering := func() bool {
		l := d.ls(t)
		for _, a := range addrs {
			found := false
			for _, s := range l.Sockets {
				found = found || s.Address == a && s.Refs == 0 && s.LingerS > 0
			}
			if !found {
				return false
			}
		}
		return true
	}

	waitServed(cur)
	restarts, modes, lastLine := 0, map[string]int{}, began
	for restarts < shortRestarts || time.Since(began) < long {
		gen++
		var mode string
		if restarts%2 == 0 {
			mode = "stop, then start"
			cur.stop(t)
			waitLong(t, time.Minute, "the sockets to linger with no holder", lingering)
			// Every client now waits on a connection in the backlog.
			waitLong(t, time.Minute, "every client to wait on a queued connection",
				func() bool { return inflight.Load() == clients })
			cur = start(t, port, gen)
		} else {
			mode = "start, then stop"
			old := cur
			cur = start(t, port, gen)
			old.stop(t)
		}
		waitServed(cur)
		restarts++
		modes[mode]++
		if long == 0 || time.Since(lastLine) >= 10*time.Second {
			lastLine = time.Now()
			t.Logf("soak %v: %d restarts, %d requests answered, %d failed",
				time.Since(began).Round(time.Second), restarts, ok.Load(), failed.Load())
		}
	}
	stopClients()
	cur.stop(t)
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d restarts %v in %v: %d requests answered by %d instances, %d failed",
		restarts, modes, time.Since(began).Round(time.Millisecond), ok.Load(), len(served), failed.Load())
	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed across restarts; the first:\n  %s",
			failed.Load(), failed.Load()+ok.Load(), strings.Join(errs, "\n  "))
	}
	if len(served) != restarts+1 {
		t.Errorf("answers came from %d instances, want %d (one per start)", len(served), restarts+1)
	}
}

// soakGet makes one request on a new connection and returns the answer:
// the id of the instance that answered.
func soakGet(hc *http.Client, url string) (string, error) {
	resp, err := hc.Get(url)
	if err != nil {
		return "", err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s: %q", resp.Status, body)
	}
	id := strings.TrimSpace(string(body))
	if _, err := strconv.Atoi(id); err != nil {
		return "", fmt.Errorf("body %q", body)
	}
	return id, nil
}

// soakServer is one instance of the HTTP server under porter run.
type soakServer struct {
	cmd     *exec.Cmd
	out     *syncBuffer
	id      string         // what it answers
	stopSig syscall.Signal // asks it to stop gracefully
}

func (s *soakServer) log() string { return "server output:\n" + s.out.String() }

// startSoakServer starts `porter run -- PROG ARGS` as uid/gid on both
// loopback addresses and waits until PROG holds its sockets (porter run
// has exec'd it with LISTEN_FDS set). setup may change the command.
func startSoakServer(t *testing.T, d *daemon, uid, gid, port int, stop syscall.Signal, setup func(*exec.Cmd), prog string, args ...string) *soakServer {
	t.Helper()
	cmd := d.porterCmd(uid, gid, append([]string{"run",
		"--listen", fmt.Sprintf("v4=tcp://127.0.0.1:%d", port),
		"--listen", fmt.Sprintf("v6=tcp://[::1]:%d", port),
		"--app", "soak", "--", prog}, args...)...)
	if setup != nil {
		setup(cmd)
	}
	s := &soakServer{cmd: cmd, out: newSyncBuffer(), stopSig: stop}
	cmd.Stdout, cmd.Stderr = s.out, s.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	waitLong(t, time.Minute, "porter run to exec the server", func() bool {
		env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", cmd.Process.Pid))
		return bytes.Contains(env, []byte("LISTEN_FDS="))
	}, s.log)
	return s
}

// stop asks the server to stop gracefully and waits for it to exit with
// status 0.
func (s *soakServer) stop(t *testing.T) {
	t.Helper()
	pid := s.cmd.Process.Pid
	s.cmd.Process.Signal(s.stopSig)
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("server %d (instance %s): %v\n%s", pid, s.id, err, s.log())
		}
	case <-time.After(time.Minute):
		s.cmd.Process.Kill()
		<-done
		t.Fatalf("server %d (instance %s) did not stop within a minute of %v\n%s", pid, s.id, s.stopSig, s.log())
	}
}

// childSoakHTTP serves HTTP on its socket-activation listeners, answering
// its pid, until SIGTERM. Then it stops accepting, answers every
// connection it has accepted and exits; connections it has not accepted
// stay queued for the next instance.
//
// It does not use http.Server.Shutdown: a request read after Shutdown
// began is dropped without an answer (net/http's conn.serve returns when
// the server is shutting down), which is a failed request for a client
// that sent it before. It closes its listeners: an Accept that is taking
// a connection as Close begins still returns it (sharedfd.FD.Accept), so
// that client is answered too.
func childSoakHTTP() int {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	ls, err := porter.Listeners()
	if err != nil || len(ls) != 2 || ls[0] == nil || ls[1] == nil {
		fmt.Fprintf(os.Stderr, "listeners: %v %v\n", ls, err)
		return 1
	}
	var active atomic.Int64 // connections accepted and not yet closed
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%d\n", os.Getpid())
		}),
		ReadHeaderTimeout: 30 * time.Second,
		ConnState: func(c net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				active.Add(1)
			case http.StateClosed, http.StateHijacked:
				active.Add(-1)
			}
		},
	}
	dls := make([]*drainListener, len(ls))
	errc := make(chan error, len(ls))
	for i, l := range ls {
		dls[i] = &drainListener{Listener: l}
		go func() { errc <- srv.Serve(dls[i]) }()
	}
	select {
	case <-sig:
	case err := <-errc:
		fmt.Fprintf(os.Stderr, "serve: %v\n", err)
		return 1
	}
	srv.SetKeepAlivesEnabled(false)
	for _, l := range dls {
		l.stopping.Store(true)
		l.Close()
	}
	for range dls {
		if err := <-errc; !errors.Is(err, net.ErrClosed) {
			fmt.Fprintf(os.Stderr, "serve: %v\n", err)
			return 1
		}
	}
	for deadline := time.Now().Add(time.Minute); active.Load() > 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "%d connections still open a minute after SIGTERM\n", active.Load())
			return 1
		}
	}
	return 0
}

// drainListener ends http.Server.Serve once stopping is set: the error of
// the Accept that Close interrupts becomes net.ErrClosed,
// which Serve does not retry.
type drainListener struct {
	net.Listener
	stopping atomic.Bool
}

func (l *drainListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil && l.stopping.Load() {
		return nil, fmt.Errorf("%w (stopping after: %v)", net.ErrClosed, err)
	}
	return c, err
}
