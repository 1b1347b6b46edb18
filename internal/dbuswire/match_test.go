package dbuswire

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseRule(t *testing.T) {
	for _, tc := range []struct {
		in    string
		want  Rule
		canon string
	}{
		{"", Rule{}, ""},
		{"type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='com.example'",
			Rule{Type: TypeSignal, Sender: "org.freedesktop.DBus", Interface: "org.freedesktop.DBus", Member: "NameOwnerChanged", Args: map[int]string{0: "com.example"}},
			"type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='com.example'"},
		// Unquoted values, spaces before keys, a trailing comma, keys in
		// any order.
		{" member=Foo, type=method_call,path=/a/b,", Rule{Type: TypeMethodCall, Member: "Foo", Path: "/a/b"}, "type='method_call',member='Foo',path='/a/b'"},
		// The spec's quoting example: \' outside quotes is an apostrophe,
		// inside quotes a backslash is literal.
		{`arg0='\',arg1=\',arg2=',',arg3='\\',arg4='a'\''b',arg5=''`,
			Rule{Args: map[int]string{0: `\`, 1: `'`, 2: `,`, 3: `\\`, 4: `a'b`, 5: ``}},
			`arg0='\',arg1=''\''',arg2=',',arg3='\\',arg4='a'\''b',arg5=''`},
		{"arg63path='/a/',arg2path='/',path_namespace='/org',destination=':1.5',eavesdrop='true'",
			Rule{PathNamespace: "/org", Destination: ":1.5", ArgPaths: map[int]string{63: "/a/", 2: "/"}, Eavesdrop: true},
			"path_namespace='/org',destination=':1.5',arg2path='/',arg63path='/a/',eavesdrop='true'"},
		{"arg0namespace='org.gnome',eavesdrop='false',type='error'", Rule{Type: TypeError, Arg0Namespace: "org.gnome"}, "type='error',arg0namespace='org.gnome'"},
		{"arg0namespace=com,type=method_return", Rule{Type: TypeMethodReturn, Arg0Namespace: "com"}, "type='method_return',arg0namespace='com'"},
	} {
		r, err := ParseRule(tc.in)
		if err != nil {
			t.Errorf("ParseRule(%q): %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(*r, tc.want) {
			t.Errorf("ParseRule(%q) = %+v; want %+v", tc.in, *r, tc.want)
		}
		if got := r.String(); got != tc.canon {
			t.Errorf("String of %q = %q; want %q", tc.in, got, tc.canon)
		}
		if again, err := ParseRule(r.String()); err != nil || !reflect.DeepEqual(again, r) {
			t.Errorf("ParseRule(String()) of %q = %+v, %v", tc.in, again, err)
		}
	}
}

func TestParseRuleRejects(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"type='signal", "unbalanced"},
		{"type='bogus'", "message type"},
		{"sender='nodots'", "bus name"},
		{"interface='a'", "interface"},
		{"member='a.b'", "member"},
		{"path='a'", "object path"},
		{"path_namespace='/a/'", "object path"},
		{"destination='x'", "bus name"},
		{"arg0namespace=':1.1'", "namespace"},
		{"arg0namespace='a..b'", "namespace"},
		{"eavesdrop='yes'", "boolean"},
		{"arg64='x'", "0 to 63"},
		{"arg='x'", "0 to 63"},
		{"arg+1='x'", "0 to 63"},
		{"arg1namespace='a'", "0 to 63"},
		{"arg1='x',arg01='y'", "twice"},
		{"arg1='x',arg1path='/y'", "twice"},
		{"arg0='x',arg0namespace='y'", "arg0namespace with"},
		{"path='/a',path_namespace='/b'", "together"},
		{"type='signal',type='signal'", "given twice"},
		{"bogus='x'", "unknown key"},
		{"type", "without '='"},
		{"='x'", "without '='"},
		{"arg0='" + strings.Repeat("x", 1020) + "'", "limit"},
	} {
		if r, err := ParseRule(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseRule(%q) = %+v, %v; want an error saying %q", tc.in, r, err, tc.want)
		}
	}
}

func TestMatch(t *testing.T) {
	sig := &Header{Type: TypeSignal, Path: "/org/example/Obj", Interface: "org.example.I", Member: "Changed", Sender: ":1.7"}
	call := &Header{Type: TypeMethodCall, Path: "/x", Member: "Do", Destination: ":1.9"}
	ret := &Header{Type: TypeMethodReturn, ReplySerial: 4, Destination: ":1.9"}
	names := []string{":1.7", "org.example.Svc"}
	args := []Arg{{0, 's', "org.example.Svc.Sub"}, {1, 'o', "/org/example/"}, {3, 's', "/a/b"}}
	for _, tc := range []struct {
		rule string
		h    *Header
		want bool
	}{
		{"", sig, true},
		{"", ret, true},
		{"type='signal'", sig, true},
		{"type='signal'", call, false},
		{"sender='org.example.Svc'", sig, true},
		{"sender=':1.7'", sig, true},
		{"sender='org.other.Svc'", sig, false},
		{"interface='org.example.I',member='Changed',path='/org/example/Obj'", sig, true},
		{"interface='org.example.I'", call, false},
		{"member='Other'", sig, false},
		{"path='/org/example'", sig, false},
		{"path_namespace='/org/example'", sig, true},
		{"path_namespace='/org/example/Obj'", sig, true},
		{"path_namespace='/org/exam'", sig, false},
		{"path_namespace='/'", sig, true},
		{"path_namespace='/'", ret, false},
		{"destination=':1.9'", call, true},
		{"destination=':1.9'", sig, false},
		{"arg0='org.example.Svc.Sub'", sig, true},
		{"arg0='org.example.Svc'", sig, false},
		{"arg1='/org/example/'", sig, false}, // argN matches STRING only
		{"arg2=''", sig, false},              // no such string argument
		{"arg3='/a/b'", sig, true},
		{"arg1path='/org/example/'", sig, true},
		{"arg1path='/org/example/Obj'", sig, true}, // the argument ends in '/' and is a prefix
		{"arg1path='/org/'", sig, true},            // the rule ends in '/' and is a prefix
		{"arg1path='/org'", sig, false},
		{"arg3path='/a/'", sig, true},
		{"arg3path='/a/b/c'", sig, false},
		{"arg0namespace='org.example'", sig, true},
		{"arg0namespace='org.example.Svc.Sub'", sig, true},
		{"arg0namespace='org.exam'", sig, false},
		{"arg0namespace='org.example.Svc.Sub.More'", sig, false},
		{"eavesdrop='true'", call, true},
	} {
		r, err := ParseRule(tc.rule)
		if err != nil {
			t.Fatalf("ParseRule(%q): %v", tc.rule, err)
		}
		if got := r.Match(tc.h, names, args); got != tc.want {
			t.Errorf("rule %q on %+v: %v; want %v", tc.rule, *tc.h, got, tc.want)
		}
	}
}
