#!/usr/bin/python3
"""A python3-dbus peer driven by porter's D-Bus scenario harness.

Usage: peer.py ADDRESS. It connects to the bus at ADDRESS, prints
"hello UNIQUE" and then runs the commands it reads from stdin, one a line,
printing what it did and every NameAcquired, NameLost and watched signal
as it arrives. "sync" answers "synced" after a round trip to the bus, so
everything the bus sent this peer before it has been printed.
"""
import os
import sys

import dbus
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

BUS = "org.freedesktop.DBus"
BUS_PATH = "/org/freedesktop/DBus"


def out(*words):
    print(*words, flush=True)


def text(v):
    if isinstance(v, (dbus.String, dbus.ObjectPath, str)):
        return repr(str(v))
    if isinstance(v, dbus.Boolean):
        return "true" if v else "false"
    if isinstance(v, dbus.Array):
        return "[" + ", ".join(text(x) for x in v) + "]"
    return str(int(v))


held = []


class Echo(dbus.service.Object):
    @dbus.service.method("com.example.I", in_signature="", out_signature="", async_callbacks=("ok", "err"))
    def Hang(self, ok, err):
        # Never answers: the caller waits until this peer goes.
        held.append((ok, err))
        out("hanging")

    @dbus.service.method("com.example.I", in_signature="s", out_signature="s")
    def Echo(self, s):
        return s

    @dbus.service.method("com.example.I", in_signature="h", out_signature="s")
    def ReadFd(self, fd):
        f = os.fdopen(fd.take(), "rb")
        try:
            return f.read().decode()
        finally:
            f.close()


def main():
    loop = GLib.MainLoop()
    bus = dbus.bus.BusConnection(sys.argv[1], mainloop=DBusGMainLoop())
    me = bus.get_unique_name()
    out("hello", me)
    driver = dbus.Interface(bus.get_object(BUS, BUS_PATH), BUS)

    bus.add_signal_receiver(lambda n: out("NameAcquired", n), "NameAcquired", BUS, BUS, BUS_PATH)
    bus.add_signal_receiver(lambda n: out("NameLost", n), "NameLost", BUS, BUS, BUS_PATH)
    objects = []
    filters = []

    def on_message(conn, msg):
        if msg.get_type() == 4 and msg.get_interface() == "com.example.I":
            out("signal", msg.get_interface() + "." + msg.get_member(), msg.get_path(),
                " ".join(text(a) for a in msg.get_args_list()))

    def run(words):
        cmd = words[0]
        if cmd == "request":
            r = bus.request_name(words[1], int(words[2]))
            out("request", words[1], words[2], "->", r)
        elif cmd == "release":
            out("release", words[1], "->", bus.release_name(words[1]))
        elif cmd == "sync":
            # Asynchronous, so its reply is dispatched after every message
            # the bus sent before it.
            bus.call_async(BUS, BUS_PATH, "org.freedesktop.DBus.Peer", "Ping", "", (),
                           lambda *a: out("synced"), lambda e: (out("sync error", e.get_dbus_name()), out("synced")))
        elif cmd == "serve":
            objects.append(Echo(bus, "/x"))
            out("serving /x")
        elif cmd == "watch":
            bus.add_signal_receiver(lambda n, o, w: out("NameOwnerChanged", repr(str(n)), repr(str(o)), repr(str(w))),
                                    "NameOwnerChanged", BUS, BUS, BUS_PATH, arg0=words[1])
            out("watching", words[1])
        elif cmd == "watchowner":
            bus.watch_name_owner(words[1], lambda o: out("owner", words[1], repr(str(o))))
        elif cmd == "call":
            r = bus.call_blocking(words[1], "/x", "com.example.I", "Echo", "s", (words[2],), timeout=10)
            out("reply", text(r))
        elif cmd == "callfd":
            rd, wr = os.pipe()
            os.write(wr, words[2].encode())
            os.close(wr)
            r = bus.call_blocking(words[1], "/x", "com.example.I", "ReadFd", "h", (dbus.types.UnixFd(rd),), timeout=10)
            os.close(rd)
            out("reply", text(r))
        elif cmd == "creds":
            uid = driver.GetConnectionUnixUser(me)
            pid = driver.GetConnectionUnixProcessID(me)
            out("GetConnectionUnixUser", "matches euid" if uid == os.geteuid() else "is %d, euid %d" % (uid, os.geteuid()))
            out("GetConnectionUnixProcessID", "matches pid" if pid == os.getpid() else "differs from pid")
            creds = driver.GetConnectionCredentials(me)
            for k in sorted(creds):
                v = creds[k]
                if k == "UnixUserID":
                    v = "matches euid" if v == os.geteuid() else "is %d" % v
                elif k == "ProcessID":
                    v = "matches pid" if v == os.getpid() else "differs from pid"
                elif k == "UnixGroupIDs":
                    v = "matches groups" if sorted(v) == sorted(set([os.getegid()] + os.getgroups())) else "is " + text(v)
                else:
                    v = "present (%s)" % type(v).__name__
                out("GetConnectionCredentials", k, v)
        elif cmd == "callbus":
            # callbus METHOD SIGNATURE ARGS...: prints the driver's answer.
            sig = "" if words[2] == "-" else words[2]
            r = bus.call_blocking(BUS, BUS_PATH, BUS, words[1], sig, tuple(words[3:]), timeout=10)
            out(words[1], "->", text(r))
        elif cmd == "getid":
            i = str(driver.GetId())
            ok = len(i) == 32 and all(ch in "0123456789abcdef" for ch in i)
            out("GetId", "32 hex digits" if ok else "is not 32 hex digits: " + repr(i))
        elif cmd == "match":
            bus.add_match_string(words[1])
            if not filters:
                bus.add_message_filter(on_message)
                filters.append(on_message)
            out("matching", words[1])
        elif cmd == "exit":
            loop.quit()
        else:
            out("unknown command", cmd)

    pending = [b""]

    def on_stdin(fd, cond):
        # Unbuffered: a buffered reader could hold a line GLib never
        # reports again.
        data = os.read(fd, 4096)
        if not data:
            loop.quit()
            return False
        pending[0] += data
        while b"\n" in pending[0]:
            line, pending[0] = pending[0].split(b"\n", 1)
            words = line.decode().split()
            if not words:
                continue
            try:
                run(words)
            except dbus.exceptions.DBusException as e:
                out(words[0], "error", e.get_dbus_name())
        return True

    GLib.unix_fd_add_full(GLib.PRIORITY_DEFAULT, 0, GLib.IO_IN | GLib.IO_HUP, on_stdin)
    loop.run()


main()
