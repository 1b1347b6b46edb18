#!/usr/bin/env python3
"""A porter broker client written from docs/protocol-broker.md alone.

Usage: broker_client.py CONTROL-SOCKET FREE-PORT

Requests, shares, lists, defers, picks up and releases sockets, checks
every answer byte by byte and the passed descriptors, and prints
"all checks passed". Any failed check raises.
"""

import errno
import socket
import struct
import sys

MAX = 2048


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)
    return s


def header(t):
    return bytes([1, ord(t), 0, 0])


def request(proto, ip, port, share, app, defer=False):
    addr = socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)
    fam = bytes([6 if len(addr) == 16 else 4])
    name = app.encode()
    return header("Q") + proto + fam + bytes([share, 1 if defer else 0]) + struct.pack("!H", port) + addr + bytes([len(name)]) + name


def recv(s):
    data, fds, _, _ = socket.recv_fds(s, MAX, 1)
    assert len(data) >= 4 and data[0] == 1 and data[2:4] == b"\0\0", data
    return chr(data[1]), data, fds


def grant(data):
    token = data[4:20]
    proto, fam = data[20:21], data[21:22]
    (port,) = struct.unpack("!H", data[22:24])
    alen = 4 if fam == b"\x04" else 16
    assert len(data) == 24 + alen, data
    return token, proto, port, data[24:24 + alen]


def error(data):
    code, err, n = struct.unpack("!HIH", data[4:12])
    assert len(data) == 12 + n
    return code, err, data[12:].decode()


def main():
    path, port = sys.argv[1], int(sys.argv[2])
    a = connect(path)

    # REQUEST TCP 127.0.0.1:port, share any, app "py": GRANT with a listening socket.
    a.send(request(b"T", "127.0.0.1", port, 2, "py"))
    t, data, fds = recv(a)
    assert t == "G" and len(fds) == 1, (t, data, fds)
    tok1, proto, bport, baddr = grant(data)
    assert proto == b"T" and bport == port and baddr == bytes([127, 0, 0, 1])
    lsock = socket.socket(fileno=fds[0])
    assert lsock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    c = socket.create_connection(("127.0.0.1", port))
    conn, _ = lsock.accept()
    c.sendall(b"hi")
    assert conn.recv(2) == b"hi"
    c.close()
    conn.close()

    # The same socket again, from a second connection: the same inode.
    b = connect(path)
    b.send(request(b"T", "127.0.0.1", port, 2, "other"))
    t, data, fds = recv(b)
    assert t == "G" and len(fds) == 1
    tok2 = grant(data)[0]
    import os
    assert os.fstat(fds[0]).st_ino == os.fstat(lsock.fileno()).st_ino
    os.close(fds[0])

    # share none meets holders: CONFLICT (5), errno EADDRINUSE, not fatal.
    b.send(request(b"T", "127.0.0.1", port, 0, "x"))
    t, data, fds = recv(b)
    code, err, text = error(data)
    assert t == "E" and code == 5 and err == errno.EADDRINUSE and "py" in text, (t, code, err, text)

    # Port 80 without a rule: DENIED (6), EACCES.
    b.send(request(b"T", "127.0.0.1", 80, 2, "x"))
    t, data, fds = recv(b)
    code, err, text = error(data)
    assert t == "E" and code == 6 and err == errno.EACCES, (code, err, text)

    # LIST: SOCKET, 2 HOLDERs, END.
    b.send(header("L"))
    t, data, _ = recv(b)
    assert t == "S", t
    proto, fam, sport, refs, linger, nh = struct.unpack("!ccHIII", data[4:20])
    assert proto == b"T" and sport == port and refs == 2 and nh == 2, (proto, sport, refs, nh)
    apps = set()
    for _ in range(nh):
        t, data, _ = recv(b)
        assert t == "H"
        pid, uid, gid, state, share = struct.unpack("!IIIBB", data[4:18])
        n = data[26]
        apps.add(data[27:27 + n].decode())
        assert state == 1 and share == 2 and pid == os.getpid()
        assert data[18:22] in (tok1[:4], tok2[:4])
    assert apps == {"py", "other"}, apps
    t, data, _ = recv(b)
    assert t == "Z" and struct.unpack("!I", data[4:8])[0] == 1 and data[8] == 0

    # RELEASE by token: DONE with the token.
    b.send(header("R") + tok2)
    t, data, _ = recv(b)
    assert t == "D" and data[4:20] == tok2

    # RELEASE-FD: DONE with the token of the reference this connection holds.
    a.sendmsg([header("F")], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", lsock.fileno()))])
    t, data, _ = recv(a)
    assert t == "D" and data[4:20] == tok1, (t, data)

    # DEFER on one connection, PICKUP on another.
    a.send(request(b"U", "::1", 0, 1, "py", defer=True))
    t, data, fds = recv(a)
    assert t == "G" and fds == []
    tok3, proto, uport, _ = grant(data)
    assert proto == b"U" and uport != 0
    b.send(header("P") + tok3)
    t, data, fds = recv(b)
    assert t == "G" and len(fds) == 1 and grant(data)[0] == tok3
    u = socket.socket(fileno=fds[0])
    assert u.type == socket.SOCK_DGRAM and u.getsockname()[1] == uport
    u.close()
    b.send(header("P") + tok3)  # a token is picked up once
    t, data, _ = recv(b)
    assert t == "E" and error(data)[0] == 8

    # Version 2: ERROR VERSION (2), fatal: the broker closes the connection.
    a.send(bytes([2, ord("L"), 0, 0]))
    t, data, _ = recv(a)
    assert t == "E" and error(data)[0] == 2
    assert a.recv(MAX) == b""

    lsock.close()
    a.close()
    b.close()
    print("all checks passed")


if __name__ == "__main__":
    main()
