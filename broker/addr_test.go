package broker

import "testing"

func TestParseAddr(t *testing.T) {
	for _, tc := range []struct {
		network, address, want string
		proto                  Proto
	}{
		{"tcp", ":80", "0.0.0.0:80", TCP},
		{"tcp4", ":http", "0.0.0.0:80", TCP},
		{"tcp6", ":80", "[::]:80", TCP},
		{"tcp", "localhost:8080", "127.0.0.1:8080", TCP},
		{"tcp6", "localhost:8080", "[::1]:8080", TCP},
		{"udp", "[::1]:53", "[::1]:53", UDP},
		{"udp", ":domain", "0.0.0.0:53", UDP},
		{"udp6", "localhost:53", "[::1]:53", UDP},
		{"udp4", "10.1.2.3:53", "10.1.2.3:53", UDP},
		{"tcp", "[::ffff:127.0.0.1]:80", "127.0.0.1:80", TCP},
		{"udp4", "[::ffff:10.0.0.1]:53", "10.0.0.1:53", UDP},
		{"tcp", "example.com:80", "error", 0},
		{"tcp4", "[::1]:80", "error", 0},
		{"tcp6", "1.2.3.4:80", "error", 0},
		{"tcp6", "[::ffff:127.0.0.1]:80", "error", 0},
		{"tcp", "1.2.3.4", "error", 0},
		{"tcp", ":99999", "error", 0},
		{"tcp", ":nosuchservice", "error", 0},
		{"unix", "/x:80", "error", 0},
		{"", ":80", "error", 0},
		{"TCP", ":80", "error", 0},
	} {
		proto, got, err := ParseAddr(tc.network, tc.address)
		s := got.String()
		if err != nil {
			s = "error"
		}
		if s != tc.want || proto != tc.proto {
			t.Errorf("ParseAddr(%q, %q) = %v, %s (%v), want %v, %s", tc.network, tc.address, proto, s, err, tc.proto, tc.want)
		}
	}
}
