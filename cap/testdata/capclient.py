#!/usr/bin/env python3
"""A client of porter's capability protocol, written from docs/protocol-cap.md
alone (issue 12: the doc must be enough to write a client from it).

Python 3 standard library only. The library part (Door, Session, encode,
decode) is usable on its own; run as a program, it plays a scenario that
cap/pyclient_test.go checks and prints one JSON line per step on stdout
(the door is inherited: PORTER_CAP_ROOT=<fd>):

    capclient.py scenario     # values, refs both ways, errors, revocation
    capclient.py gone         # the server ends during a call
"""

import json
import os
import socket
import stat
import struct
import sys

VERSION = 1
OPEN, OPENED, CALL, REPLY, ERROR, CANCEL, REVOKED, FDS, CLOSE = range(1, 10)
HEADER = struct.Struct("<BBHHHQII")  # version type flags nfds name_len id body_len code
MAX_FRAME = 65536
SCM_MAX_FD = 253
MAX_FDS = 1024
MAX_DEPTH = 32

ERROR_NAMES = {
    1: "UNKNOWN_METHOD", 2: "BAD_ARGS", 3: "APPLICATION", 4: "REVOKED",
    5: "TOO_LARGE", 6: "OVERLOADED", 7: "INTERNAL",
}


class CapError(Exception):
    """An ERROR frame (code > 0) or a local error (code 0, name set)."""

    def __init__(self, code, name, text):
        super().__init__("%s (%d): %s" % (name, code, text))
        self.code, self.name, self.text = code, name, text


class ProtocolError(Exception):
    """The peer broke the protocol."""


# ---- the value encoding ------------------------------------------------------

class Ref:
    """A capability in a value: a Door (received) or a Door to send."""

    def __init__(self, door):
        self.door = door


class File:
    """A plain fd in a value (not a capability)."""

    def __init__(self, fd):
        self.fd = fd


def _varint(n):
    if n < 0 or n >= 1 << 64:
        raise ValueError("varint out of range: %d" % n)
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode(v, fds):
    """Encode v as one value; fds (a list) collects the fds it attaches."""
    out = bytearray()
    _enc(v, out, fds, 0)
    return bytes(out)


def _enc(v, out, fds, depth):
    if depth >= MAX_DEPTH:
        raise ValueError("value nested deeper than %d" % MAX_DEPTH)
    if v is None:
        out.append(0x00)
    elif v is False:
        out.append(0x01)
    elif v is True:
        out.append(0x02)
    elif isinstance(v, int):
        if not -(1 << 63) <= v < 1 << 63:
            raise ValueError("int out of range: %d" % v)
        out.append(0x03)
        out += _varint(((v << 1) ^ (v >> 63)) & ((1 << 64) - 1))
    elif isinstance(v, float):
        out.append(0x05)
        out += struct.pack("<d", v)
    elif isinstance(v, str):
        b = v.encode("utf-8")
        out.append(0x06)
        out += _varint(len(b)) + b
    elif isinstance(v, (bytes, bytearray)):
        out.append(0x07)
        out += _varint(len(v)) + bytes(v)
    elif isinstance(v, (list, tuple)):
        out.append(0x08)
        out += _varint(len(v))
        for e in v:
            _enc(e, out, fds, depth + 1)
    elif isinstance(v, dict):
        items = sorted((k.encode("utf-8"), e) for k, e in v.items())
        out.append(0x09)
        out += _varint(len(items))
        for k, e in items:
            out += _varint(len(k)) + k
            _enc(e, out, fds, depth + 1)
    elif isinstance(v, (Ref, Door)):
        door = v.door if isinstance(v, Ref) else v
        out.append(0x0A)
        out += _varint(len(fds))
        fds.append(door.fd)
    elif isinstance(v, File):
        out.append(0x0B)
        out += _varint(len(fds))
        fds.append(v.fd)
    else:
        raise TypeError("cannot encode %r" % type(v))


class _Reader:
    def __init__(self, body, fds, doors):
        self.b, self.i, self.fds, self.doors = body, 0, fds, doors
        self.used = [False] * len(fds)

    def byte(self):
        if self.i >= len(self.b):
            raise ProtocolError("value ends early")
        c = self.b[self.i]
        self.i += 1
        return c

    def varint(self):
        n, shift = 0, 0
        for k in range(10):
            c = self.byte()
            if k == 9 and c > 1:
                raise ProtocolError("varint overflows 64 bits")
            n |= (c & 0x7F) << shift
            shift += 7
            if not c & 0x80:
                if c == 0 and k > 0:
                    raise ProtocolError("overlong varint")
                return n
        raise ProtocolError("varint longer than 10 bytes")

    def take(self, n):
        if n > len(self.b) - self.i:
            raise ProtocolError("length beyond the body")
        s = self.b[self.i:self.i + n]
        self.i += n
        return bytes(s)

    def fd(self):
        k = self.varint()
        if k >= len(self.fds) or self.used[k]:
            raise ProtocolError("fd index %d bad or used twice" % k)
        self.used[k] = True
        return self.fds[k]

    def value(self, depth):
        if depth >= MAX_DEPTH:
            raise ProtocolError("value nested deeper than %d" % MAX_DEPTH)
        tag = self.byte()
        if tag == 0x00:
            return None
        if tag == 0x01:
            return False
        if tag == 0x02:
            return True
        if tag == 0x03:
            z = self.varint()
            return (z >> 1) ^ -(z & 1)
        if tag == 0x04:
            return self.varint()
        if tag == 0x05:
            return struct.unpack("<d", self.take(8))[0]
        if tag == 0x06:
            return self.take(self.varint()).decode("utf-8")
        if tag == 0x07:
            return self.take(self.varint())
        if tag == 0x08:
            n = self.varint()
            if n > len(self.b) - self.i:
                raise ProtocolError("count beyond the body")
            return [self.value(depth + 1) for _ in range(n)]
        if tag == 0x09:
            n = self.varint()
            if n > len(self.b) - self.i:
                raise ProtocolError("count beyond the body")
            rec, last = {}, None
            for _ in range(n):
                k = self.take(self.varint())
                if last is not None and k <= last:
                    raise ProtocolError("record keys not increasing")
                last = k
                rec[k.decode("utf-8")] = self.value(depth + 1)
            return rec
        if tag == 0x0A:
            return self.doors.adopt(self.fd())
        if tag == 0x0B:
            return File(self.fd())
        raise ProtocolError("unknown tag 0x%02x" % tag)


def decode(body, fds, doors):
    """Decode one value; doors (a Doors) turns ref fds into Doors."""
    r = _Reader(body, fds, doors)
    v = r.value(0)
    if r.i != len(body):
        raise ProtocolError("bytes after the value")
    if not all(r.used):
        raise ProtocolError("an fd of the frame is not used by the value")
    return v


# ---- frames ------------------------------------------------------------------

def _send(sock, typ, fds=(), name=b"", id=0, body=b"", code=0):
    """Send one frame; more than SCM_MAX_FD fds go in FDS packets after it."""
    fds = list(fds)
    if len(fds) > MAX_FDS:
        raise ValueError("more than %d fds in a frame" % MAX_FDS)
    hdr = HEADER.pack(VERSION, typ, 0, len(fds), len(name), id, len(body), code)
    pkt = hdr + name + body
    if len(pkt) > MAX_FRAME:
        raise CapError(5, "TOO_LARGE", "frame of %d bytes" % len(pkt))
    first, rest = fds[:SCM_MAX_FD], fds[SCM_MAX_FD:]
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("%di" % len(first), *first))] if first else []
    sock.sendmsg([pkt], anc)
    while rest:
        part, rest = rest[:SCM_MAX_FD], rest[SCM_MAX_FD:]
        h = HEADER.pack(VERSION, FDS, 0, len(part), 0, 0, 0, 0)
        sock.sendmsg([h], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("%di" % len(part), *part))])


def _recv_packet(sock):
    """One packet: (bytes, fds). Empty bytes: end of file."""
    data, anc, flags, _ = sock.recvmsg(MAX_FRAME, socket.CMSG_SPACE(SCM_MAX_FD * 4), socket.MSG_CMSG_CLOEXEC)
    fds = []
    for level, typ, d in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            n = len(d) // 4
            fds += struct.unpack("%di" % n, d[:n * 4])
    if flags & socket.MSG_TRUNC:
        for fd in fds:
            os.close(fd)
        raise CapError(5, "TOO_LARGE", "packet longer than %d bytes" % MAX_FRAME)
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise CapError(0, "FD_LIMIT", "fds dropped by the kernel (MSG_CTRUNC)")
    return data, fds


class Frame:
    def __init__(self, typ, nfds, name, id, body, code, fds):
        self.type, self.nfds, self.name, self.id = typ, nfds, name, id
        self.body, self.code, self.fds = body, code, fds


def _recv_frame(sock):
    """Read one frame with all its fds (FDS packets included); None at EOF."""
    data, fds = _recv_packet(sock)
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    try:
        if len(data) < HEADER.size:
            raise ProtocolError("short packet")
        ver, typ, flags, nfds, name_len, id, body_len, code = HEADER.unpack_from(data)
        if ver != VERSION or flags != 0 or len(data) != HEADER.size + name_len + body_len:
            raise ProtocolError("bad header")
        if typ == FDS or len(fds) > nfds:
            raise ProtocolError("unexpected fds")
        while len(fds) < nfds:
            d2, f2 = _recv_packet(sock)
            fds += f2
            if len(d2) != HEADER.size:
                raise ProtocolError("expected an FDS packet")
            v2, t2, fl2, n2, nl2, id2, bl2, c2 = HEADER.unpack(d2)
            if t2 != FDS or n2 != len(f2) or not 1 <= n2 <= SCM_MAX_FD or len(fds) > nfds:
                raise ProtocolError("bad FDS packet")
        name = data[HEADER.size:HEADER.size + name_len]
        body = data[HEADER.size + name_len:]
        return Frame(typ, nfds, name, id, body, code, fds)
    except Exception:
        for fd in fds:
            os.close(fd)
        raise


# ---- doors and sessions ------------------------------------------------------

class Doors:
    """The doors this process holds: one fd per object, found by inode."""

    def __init__(self):
        self.by_inode = {}

    def adopt(self, fd):
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode):
            os.close(fd)
            raise ProtocolError("a ref that is not a socket")
        key = (st.st_dev, st.st_ino)
        d = self.by_inode.get(key)
        if d is not None and d.fd >= 0:
            os.close(fd)  # the same door again: keep one fd, count it
            d.refs += 1
            return d
        d = Door(fd, self, key)
        self.by_inode[key] = d
        return d


class Door:
    """A capability: the door-client fd of one object."""

    def __init__(self, fd, doors, key):
        self.fd, self.doors, self.key, self.refs = fd, doors, key, 1
        self.session = None

    def open(self):
        """Open (or reuse) this process's session to the object."""
        if self.session is None:
            self.session = Session(self)
        return self.session

    def call(self, method, arg=None):
        return self.open().call(method, arg)

    def close(self):
        self.refs -= 1
        if self.refs > 0:
            return
        if self.session is not None:
            self.session.close()
        os.close(self.fd)
        self.fd = -1
        self.doors.by_inode.pop(self.key, None)


class Session:
    """A session bound to the door's object; one call at a time."""

    def __init__(self, door):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # both close-on-exec
        try:
            d = socket.socket(fileno=os.dup(door.fd))  # a socket object for sendmsg
            try:
                try:
                    _send(d, OPEN, fds=[b.fileno()])
                except (BrokenPipeError, ConnectionRefusedError, ConnectionResetError) as e:
                    raise CapError(0, "GONE", "the door refuses: %s" % e)
            finally:
                d.close()
        except Exception:
            a.close()
            raise
        finally:
            b.close()
        self.sock, self.door, self.next_id = a, door, 1
        f = self._recv()
        if f is None:
            self.sock.close()
            raise CapError(0, "GONE", "the session ended before OPENED")
        if f.type != OPENED or len(f.body) != 8:
            self.sock.close()
            raise ProtocolError("expected OPENED, got type %d" % f.type)
        self.cookie = struct.unpack("<Q", f.body)[0]

    def _recv(self):
        return _recv_frame(self.sock)

    def call(self, method, arg=None):
        fds = []
        body = encode(arg, fds)
        return self.call_raw(method.encode("ascii"), body, fds)

    def call_raw(self, name, body, fds=()):
        """Send one CALL with this name and body as they are; its answer."""
        id, self.next_id = self.next_id, self.next_id + 1
        try:
            _send(self.sock, CALL, fds=fds, name=name, id=id, body=body)
        except (BrokenPipeError, ConnectionResetError):
            # The server closed the session; what it sent before is still
            # queued: a REVOKED tells revocation from the server's end.
            self._end(self._drain())
        while True:
            f = self._recv()
            if f is None:
                self._end(False)
            if f.type == REVOKED:
                self._end(True)
            if f.type not in (REPLY, ERROR) or f.id != id:
                for fd in f.fds:
                    os.close(fd)
                raise ProtocolError("unexpected frame type %d id %d" % (f.type, f.id))
            if f.type == ERROR:
                for fd in f.fds:
                    os.close(fd)
                raise CapError(f.code, ERROR_NAMES.get(f.code, "?"), f.body.decode("utf-8", "replace"))
            try:
                return decode(f.body, f.fds, self.door.doors)
            except Exception:
                for fd in f.fds:
                    os.close(fd)
                raise

    def _drain(self):
        """Read what is left on an ended session: whether it holds REVOKED."""
        revoked = False
        while True:
            try:
                f = self._recv()
            except (OSError, ProtocolError, CapError):
                return revoked
            if f is None:
                return revoked
            for fd in f.fds:
                os.close(fd)
            revoked = revoked or f.type == REVOKED

    def _end(self, revoked):
        """The session ended: drop it and raise REVOKED or SERVER_GONE."""
        self.sock.close()
        self.door.session = None
        if revoked:
            raise CapError(4, "REVOKED", "the object was revoked")
        raise CapError(0, "SERVER_GONE", "the session ended")

    def close(self):
        try:
            _send(self.sock, CLOSE)
        except OSError:
            pass
        self.sock.close()
        self.door.session = None


def inherit(name, doors):
    """Take the door named PORTER_CAP_<name>: close-on-exec, variable unset."""
    var = "PORTER_CAP_" + name
    fd = int(os.environ.pop(var))
    os.set_inheritable(fd, False)
    return doors.adopt(fd)


# ---- the scenario cap/pyclient_test.go checks --------------------------------

def _jsonable(v):
    if isinstance(v, Door):
        return {"ref": True}
    if isinstance(v, File):
        return {"file": True}
    if isinstance(v, bytes):
        return {"bytes": v.hex()}
    if isinstance(v, list):
        return [_jsonable(e) for e in v]
    if isinstance(v, dict):
        return {k: _jsonable(e) for k, e in v.items()}
    return v


def _read_all(fd):
    out = b""
    while True:
        b = os.read(fd, 4096)
        if not b:
            return out
        out += b


def _open_fds():
    return sorted(int(n) for n in os.listdir("/proc/self/fd"))


def scenario():
    out = sys.stdout

    def say(**kw):
        out.write(json.dumps(kw, sort_keys=True) + "\n")
        out.flush()

    def err(step, f, *a):
        try:
            f(*a)
            say(step=step, error=None)
        except CapError as e:
            say(step=step, code=e.code, error=e.name, text=e.text)

    fds0 = _open_fds()
    doors = Doors()
    root = inherit("ROOT", doors)
    say(step="inherit", env_unset="PORTER_CAP_ROOT" not in os.environ,
        cloexec=not os.get_inheritable(root.fd))

    s = root.open()
    say(step="opened", cookie=str(s.cookie))

    values = [
        0, 1, -1, 63, -64, 1 << 40, -(1 << 63), (1 << 63) - 1,
        "", "hello", "h\u00e9llo \u2603", True, False, None, 2.5, b"\x00\xff",
        [], [1, "two", [3]], {}, {"b": 2, "a": "x", "nested": {"list": [1, 2, {"k": -7}]}},
    ]
    for v in values:
        got = root.call("Echo", v)
        say(step="echo", sent=_jsonable(v), got=_jsonable(got), same=(got == v and type(got) is type(v)))

    say(step="add", got=root.call("Add", {"a": 2, "b": 40}))

    c1 = root.call("Counter", "c1")
    say(step="counter", is_ref=isinstance(c1, Door))
    say(step="inc", got=c1.call("Inc", 5))
    say(step="inc", got=c1.call("Inc", 2))

    again = root.call("Same", None)  # the same counter handed out once more
    say(step="same", is_ref=isinstance(again, Door), dedup=again is c1, refs=c1.refs)
    again.close()  # one of two references: the fd stays

    say(step="give", got=root.call("Give", c1))  # a Ref passed back as an argument
    say(step="inc", got=c1.call("Inc", 1))

    say(step="ping", got=_jsonable(root.call("Ping", {})))  # struct{} is an empty record, both ways
    err("emptybody", root.open().call_raw, b"Ping", b"")  # a body is one value, never empty
    say(step="person", got=root.call("Person", {"Name": "Ada", "Age": 36}))  # untagged fields

    note = root.call("Note", "from Go")  # a plain fd in a result
    say(step="note", got=_read_all(note.fd).decode())
    os.close(note.fd)
    r, w = os.pipe()
    n = root.call("Write", {"f": File(w), "text": "from Python"})  # and in an argument
    os.close(w)  # sending lends: the fd stays ours
    say(step="write", got=_read_all(r).decode()[:n])
    os.close(r)

    err("unknown", root.call, "NoSuchMethod", None)
    err("badargs", root.call, "Add", "not a record")
    err("fail", root.call, "Fail", "boom")

    say(step="revoke", got=root.call("RevokeCounter", None))
    err("revoked", c1.call, "Inc", 1)  # the session saw REVOKED
    err("gone", c1.call, "Inc", 1)  # a new session: the door refuses

    c1.close()
    root.close()
    say(step="done", leaked=[fd for fd in _open_fds() if fd not in fds0])


def gone():
    """The server ends during a call (the Go test closes it)."""
    def say(**kw):
        sys.stdout.write(json.dumps(kw, sort_keys=True) + "\n")
        sys.stdout.flush()

    def err(step, f, *a):
        try:
            f(*a)
            say(step=step, error=None)
        except CapError as e:
            say(step=step, code=e.code, error=e.name, text=e.text)

    fds0 = _open_fds()
    doors = Doors()
    root = inherit("ROOT", doors)
    root.open()
    say(step="opened")
    err("pending", root.call, "Block", {})  # the server closes meanwhile
    err("gone", root.call, "Echo", 1)  # a new session: the door refuses
    root.close()
    say(step="done", leaked=[fd for fd in _open_fds() if fd not in fds0])


if __name__ == "__main__":
    modes = {"scenario": scenario, "gone": gone}
    if len(sys.argv) != 2 or sys.argv[1] not in modes:
        sys.stderr.write("usage: capclient.py scenario|gone\n")
        sys.exit(2)
    modes[sys.argv[1]]()
