#!/usr/bin/env python3
"""A porter-creator client written from docs/protocol-creator.md alone.

Usage: client.py PATH-TO-PORTER-CREATOR

Starts the creator on a socketpair, asks for sockets of every kind, checks
the answers byte by byte, the passed descriptors and the exit statuses, and
prints "all checks passed". Any failed check raises.
"""

import errno
import ipaddress
import os
import socket
import struct
import subprocess
import sys


def start(path):
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen([path], stdin=theirs, stdout=theirs)
    theirs.close()
    return mine, proc


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("creator closed the connection")
        data += chunk
    return data


def create(sock, kind, address, port):
    """Returns a socket.socket, or raises OSError(errno) with the step."""
    addr = ipaddress.ip_address(address)
    family = b"4" if addr.version == 4 else b"6"
    sock.sendall(b"S" + kind + family + struct.pack("!H", port) + addr.packed)
    answer = recv_exact(sock, 1)
    if answer == b"S":
        data, fds, flags, _ = socket.recv_fds(sock, 1, 1)
        assert data == b"\x00", data
        assert len(fds) == 1, fds
        return socket.socket(fileno=fds[0])
    if answer == b"E":
        rest = recv_exact(sock, 5)
        step = rest[:1]
        assert step in (b"S", b"B"), step
        (err,) = struct.unpack("=i", rest[1:])  # native-endian C int
        raise OSError(err, "%s failed: %s" % ("socket" if step == b"S" else "bind", os.strerror(err)))
    raise AssertionError("unexpected answer %r" % answer)


def main():
    path = sys.argv[1]
    sock, proc = start(path)

    s = create(sock, b"T", "127.0.0.1", 0)
    assert s.type == socket.SOCK_STREAM and s.family == socket.AF_INET
    host, port = s.getsockname()
    assert host == "127.0.0.1" and port != 0, (host, port)
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
    s.listen(1)
    c = socket.create_connection(("127.0.0.1", port))
    conn, _ = s.accept()
    c.sendall(b"hi")
    assert conn.recv(2) == b"hi"
    for x in (c, conn, s):
        x.close()

    s = create(sock, b"U", "::1", 0)
    assert s.type == socket.SOCK_DGRAM and s.family == socket.AF_INET6
    assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)  # Linux value; Python lacks the name
    assert s.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER) == 0  # IPV6_PMTUDISC_DONT
    c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    c.sendto(b"ping", s.getsockname()[:2])
    assert s.recv(4) == b"ping"
    c.close()
    s.close()

    try:
        create(sock, b"U", "192.0.2.1", 0)
        raise AssertionError("192.0.2.1 should not be bindable")
    except OSError as e:
        assert e.errno == errno.EADDRNOTAVAIL, e

    # Still serving after an error; then terminate: status 0, nothing written.
    create(sock, b"T", "::1", 0).close()
    sock.sendall(b"T")
    assert sock.recv(1) == b""
    assert proc.wait(10) == 0, proc.returncode
    sock.close()

    # Invalid input: "FI" and status 3.
    sock, proc = start(path)
    sock.sendall(b"SU9")
    assert recv_exact(sock, 2) == b"FI"
    assert sock.recv(1) == b""
    assert proc.wait(10) == 3, proc.returncode
    sock.close()

    # End of input inside a command: nothing written, status 1.
    sock, proc = start(path)
    sock.sendall(b"SU4\x00")
    sock.shutdown(socket.SHUT_WR)
    assert sock.recv(1) == b""
    assert proc.wait(10) == 1, proc.returncode
    sock.close()

    print("all checks passed")


if __name__ == "__main__":
    main()
