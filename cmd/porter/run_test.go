package main

import (
	"strings"
	"testing"
)

func TestParseListen(t *testing.T) {
	for _, c := range []struct {
		in, name, sock, err string
	}{
		{"tcp://0.0.0.0:80", "tcp-80", "tcp://0.0.0.0:80", ""},
		{"web=tcp://:8080", "web", "tcp://0.0.0.0:8080", ""},
		{"dns=udp://[::]:53", "dns", "udp://[::]:53", ""},
		{"udp6://:53", "udp-53", "udp://[::]:53", ""},
		{"tcp4://localhost:http", "tcp-80", "tcp://127.0.0.1:80", ""},
		{"a:b=tcp://:80", "", "", "without ':'"},
		{strings.Repeat("n", 256) + "=tcp://:80", "", "", "1 to 255"},
		{"=tcp://:80", "", "", "1 to 255"},
		{"tab\t=tcp://:80", "", "", "printable"},
		{"sctp://:80", "", "", "protocol"},
		{"0.0.0.0:80", "", "", "PROTO://"},
		{"tcp://example.com:80", "", "", "not an IP address"},
		{"tcp4://[::1]:80", "", "", "does not belong"},
		{"tcp://:99999", "", "", "port"},
	} {
		s, err := parseListen(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: %v, want an error with %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if got := s.req.Proto.String() + "://" + s.req.Addr.String(); s.name != c.name || got != c.sock {
			t.Errorf("%q: name %q socket %s, want %q %s", c.in, s.name, got, c.name, c.sock)
		}
	}
}

func TestActivationEnv(t *testing.T) {
	env := activationEnv([]string{"PATH=/bin", "LISTEN_FDS=9", "LISTEN_PID=1", "LISTEN_FDNAMES=x", "PORTER_BROKER_FD=7", "HOME=/"}, 2, []string{"web", "dns"})
	got := strings.Join(env, " ")
	for _, want := range []string{"PATH=/bin", "HOME=/", "LISTEN_FDS=2", "LISTEN_FDNAMES=web:dns", "PORTER_BROKER_FD=5"} {
		if !strings.Contains(got, want) {
			t.Errorf("env %q lacks %s", got, want)
		}
	}
	if strings.Count(got, "LISTEN_FDS=") != 1 || strings.Contains(got, "LISTEN_PID=1 ") {
		t.Errorf("old variables kept: %q", got)
	}
}
