#!/usr/bin/env python3
"""A porter bus client written from docs/protocol-bus.md alone.

Python 3, standard library only. Usage:

  busclient.py [--bus PATH] [--label L] bloomcheck
      check SipHash-2-4 and the bloom against the page's test vectors
  busclient.py [--bus PATH] join
      join, print "address :1.N", say BYE
  busclient.py [--bus PATH] call [--routed] DEST MEMBER [ARG ...]
      call DEST (":1.N" or a name) with the ARGs D-Bus-marshalled as
      strings (signature "s"*n); print "reply direct|routed ARG..." or
      "error NAME TEXT" or "fail CODE TEXT"
  busclient.py [--bus PATH] serve NAME [COUNT]
      own NAME (DO_NOT_QUEUE), print "owner NAME :1.N", answer COUNT calls
      (default: until stdin closes) by echoing their signature and body;
      print "served direct|routed MEMBER FROM PID UID" for each, and
      "revoked CHANNEL REASON" when the master revokes a channel
  busclient.py [--bus PATH] call [--routed] [--unsealed] --memfd SIZE DEST MEMBER
      call DEST with a body of SIZE random bytes in a sealed memfd (with
      --unsealed: F_SEAL_WRITE left out, a bad memfd); print "sent memfd
      SIZE SUM", then the answer as above, or "reply direct|routed memfd
      SIZE SUM" for a reply that came as a memfd (SUM: the sum of the
      bytes mod 2^32, in decimal), "reply direct|routed bytes SIZE SUM" for
      an inline reply without a signature
  busclient.py [--bus PATH] watch NAME [COUNT]
      watch NameOwnerChanged for NAME, print "watching NAME", then one
      "changed NAME OLD NEW" line per notice (COUNT of them, default
      forever; OLD and NEW are "-" when empty)
  busclient.py [--bus PATH] publish PATH IFACE MEMBER [ARG ...]
      publish a multicast SIGNAL with the ARGs (D-Bus strings, the first 16
      also as ARGS for matching) and its bloom; print "published :1.N"
      (the publisher's address) or "fail CODE TEXT"
  busclient.py [--bus PATH] listen [--hold] IFACE MEMBER [ARG0 [COUNT]]
      subscribe to the multicast signals IFACE.MEMBER (with arg0 = ARG0
      unless ARG0 is "" or absent), print "listening", then one line per
      signal, "signal SENDER PATH IFACE.MEMBER ARG..." (COUNT of them,
      default forever), and "lost SINCE TOTAL" for each Lost notice; with
      --hold, read nothing from the bus until a line arrives on stdin, and
      stop when stdin closes
  busclient.py [--bus PATH] monitor
      BECOME_MONITOR; print "monitoring DRAINED UNCONFIRMED", then one line
      per copy, "copy TYPE FROM TO SERIAL REPLY_SERIAL [member=M]
      [memfd=SIZE] [nfds=N] [refused]" (FROM and TO as :1.N, :bus for the
      master, 0 for none), until stdin closes

serve takes calls whose body is a memfd: it checks the memfd's seals and
size as a receiver must, maps it read-only and answers the sum of its bytes
mod 2^32 as one string ("served ... memfd SIZE SUM"), or ERROR
porter.Bus.Error.BadMemfd ("refused ... BadMemfd TEXT").

Every line is flushed, so a test can read it through a pipe. A protocol
violation by the master or a peer raises (exit status 1).
"""

import fcntl
import mmap
import os
import select
import socket
import struct
import sys

# ---- the frame -------------------------------------------------------------

HDR = struct.Struct("<BBHIIHHQQQQ")  # 48 bytes
assert HDR.size == 48

CALL, REPLY, ERROR, SIGNAL = 0x01, 0x02, 0x03, 0x04
HELLO, BYE, REQUEST_NAME, RELEASE_NAME = 0x10, 0x11, 0x14, 0x15
CONNECT, DISCONNECT, ADD_MATCH, LIST = 0x16, 0x17, 0x18, 0x1B
WELCOME, DONE, FAIL, INTRODUCE, REVOKE = 0x20, 0x21, 0x22, 0x23, 0x24
IDENTITY, LIST_END, END = 0x25, 0x26, 0x30

F_DEST_NAME, F_PATH, F_INTERFACE, F_MEMBER = 1, 2, 3, 4
F_ERROR_NAME, F_SIGNATURE, F_ARGS, F_BLOOM = 5, 6, 7, 8
F_MEMFD, F_SENDER_CRED, F_MONITOR = 9, 10, 11
BECOME_MONITOR = 0x1C
TYPE_NAMES = {
    CALL: "CALL", REPLY: "REPLY", ERROR: "ERROR", SIGNAL: "SIGNAL", HELLO: "HELLO", BYE: "BYE",
    0x12: "ADD_ADDRESS", 0x13: "REMOVE_ADDRESS", REQUEST_NAME: "REQUEST_NAME",
    RELEASE_NAME: "RELEASE_NAME", CONNECT: "CONNECT", DISCONNECT: "DISCONNECT",
    ADD_MATCH: "ADD_MATCH", 0x19: "REMOVE_MATCH", 0x1A: "RESOLVE", LIST: "LIST",
    BECOME_MONITOR: "BECOME_MONITOR", WELCOME: "WELCOME", DONE: "DONE", FAIL: "FAIL",
    INTRODUCE: "INTRODUCE", REVOKE: "REVOKE", IDENTITY: "IDENTITY", LIST_END: "LIST_END", END: "END",
}
MONITORING = False  # on a monitor's connection a MEMFD field comes without its fd

ACCEPT_FDS, ACCEPT_MEMFD = 1, 2  # HELLO flags
ALL_SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL

BUS = 1
READ_BUF = 65536
MAX_FDS = 16  # until WELCOME says otherwise

CODES = {
    1: "MALFORMED", 2: "VERSION", 3: "TOO_LARGE", 4: "NOT_JOINED",
    5: "CRED_MISMATCH", 6: "DENIED", 7: "INVALID", 8: "UNKNOWN_ADDRESS",
    9: "NAME_HAS_NO_OWNER", 10: "BAD_SOURCE", 11: "QUOTA", 12: "QUEUE_FULL",
    13: "FDS_REFUSED", 14: "FD_LIMIT", 15: "BAD_MEMFD", 16: "BAD_BLOOM",
    17: "UNEXPECTED_REPLY", 18: "PEER_GONE", 19: "NAME_MOVED",
    20: "NOT_FOUND", 21: "UNKNOWN_FIELD", 22: "EXPELLED",
    23: "SHUTTING_DOWN", 24: "INTERNAL",
}


class ProtocolError(Exception):
    pass


class Frame:
    def __init__(self, typ, serial, src, dst, reply_serial=0, fields=(), body=b"", flags=0, fds=()):
        self.type, self.serial, self.src, self.dst = typ, serial, src, dst
        self.reply_serial, self.fields, self.body = reply_serial, dict(fields), body
        self.flags, self.fds = flags, list(fds)

    def encode(self):
        fl = b""
        for code, value in self.fields.items():
            fl += struct.pack("<HH", code, len(value)) + value
            fl += b"\0" * (-len(fl) % 8)
        nfds = len(self.fds) - (1 if F_MEMFD in self.fields else 0)  # the memfd is not counted
        return HDR.pack(1, self.type, self.flags, len(fl), len(self.body), nfds, 0,
                        self.serial, self.reply_serial, self.src, self.dst) + fl + self.body

    def field(self, code, default=None):
        return self.fields.get(code, default)

    def close_fds(self):
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def decode(data, fds):
    """Parse one packet; on any error close every fd that arrived first."""
    try:
        if len(data) < 48:
            raise ProtocolError("frame of %d bytes" % len(data))
        ver, typ, flags, flen, blen, nfds, res, serial, rser, src, dst = HDR.unpack_from(data)
        if ver != 1:
            raise ProtocolError("version %d" % ver)
        if res != 0 or flags & 0xFF00:
            raise ProtocolError("reserved bits set")
        if flen % 8 or 48 + flen + blen != len(data):
            raise ProtocolError("lengths do not add up: fields %d body %d packet %d" % (flen, blen, len(data)))
        fields = {}
        off, end = 48, 48 + flen
        while off < end:
            if off + 4 > end:
                raise ProtocolError("field header past fields_len")
            code, n = struct.unpack_from("<HH", data, off)
            vstart = off + 4
            vend = vstart + n
            pend = vstart + n + (-(4 + n) % 8)
            if pend > end:
                raise ProtocolError("field 0x%x runs past fields_len" % code)
            if any(data[vend:pend]):
                raise ProtocolError("nonzero field padding")
            if code in fields:
                raise ProtocolError("duplicate field 0x%x" % code)
            if code & 0x8000:
                raise ProtocolError("unknown critical field 0x%x" % code)
            fields[code] = bytes(data[vstart:vend])
            off = pend
        want = nfds + (1 if F_MEMFD in fields and not MONITORING else 0)
        if len(fds) != want:
            raise ProtocolError("%d fds attached, header says %d" % (len(fds), want))
        return Frame(typ, serial, src, dst, rser, fields, bytes(data[end:]), flags, fds)
    except Exception:
        for fd in fds:
            os.close(fd)
        raise


def recv_frame(sock):
    """One frame, or None at end of connection (EOF or an empty packet)."""
    try:
        data, anc, mflags, _ = sock.recvmsg(READ_BUF, socket.CMSG_SPACE((MAX_FDS + 1) * 4),
                                            socket.MSG_CMSG_CLOEXEC)
    except ConnectionResetError:
        return None
    fds = []
    for level, typ, cdata in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            usable = len(cdata) - len(cdata) % 4
            fds.extend(struct.unpack("<%di" % (usable // 4), cdata[:usable]))
    if mflags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise ProtocolError("control data truncated (more fds than any frame may carry)")
    if mflags & socket.MSG_TRUNC:
        for fd in fds:
            os.close(fd)
        raise ProtocolError("frame truncated (TOO_LARGE)")
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    return decode(data, fds)


def send_frame(sock, f, anc=()):
    data = f.encode()
    anc = list(anc)
    if f.fds:
        anc.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("<%di" % len(f.fds), *f.fds)))
    n = sock.sendmsg([data], anc)
    if n != len(data):
        raise ProtocolError("short send")


def fail_info(f):
    code, _, err, n, _ = struct.unpack_from("<HHIHH", f.body)
    return code, err, f.body[12:12 + n].decode()


def fmt_addr(a):
    return ":1.%d" % a


def parse_addr(s):
    if not s.startswith(":1.") or not s[3:].isdigit() or (s[3] == "0" and len(s) > 4) or len(s) > 22:
        raise ValueError("not an address: %r" % s)
    v = int(s[3:])
    if not 2 <= v < 1 << 63:
        raise ValueError("address out of range: %r" % s)
    return v


# ---- D-Bus strings (signature "s"*n) ---------------------------------------

def marshal_strings(args):
    out = b""
    for a in args:
        b = a.encode()
        out += b"\0" * (-len(out) % 4)
        out += struct.pack("<I", len(b)) + b + b"\0"
    return "s" * len(args), out


def unmarshal_strings(sig, body):
    if sig.strip("s"):
        raise ProtocolError("signature %r is not all strings" % sig)
    out, off = [], 0
    for _ in sig:
        pad = -off % 4
        if body[off:off + pad] != b"\0" * pad:
            raise ProtocolError("bad padding")
        off += pad
        (n,) = struct.unpack_from("<I", body, off)
        off += 4
        if off + n + 1 > len(body) or body[off + n] != 0:
            raise ProtocolError("bad string")
        out.append(body[off:off + n].decode())
        off += n + 1
    if off != len(body):
        raise ProtocolError("trailing bytes")
    return out


# ---- SipHash-2-4 and the bloom -------------------------------------------

M64 = (1 << 64) - 1


def _rotl(x, b):
    return ((x << b) | (x >> (64 - b))) & M64


def siphash24(key, msg):
    k0, k1 = struct.unpack("<QQ", key)
    v0, v1 = k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D
    v2, v3 = k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573

    def rnd():
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & M64; v1 = _rotl(v1, 13); v1 ^= v0; v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & M64; v3 = _rotl(v3, 16); v3 ^= v2
        v0 = (v0 + v3) & M64; v3 = _rotl(v3, 21); v3 ^= v0
        v2 = (v2 + v1) & M64; v1 = _rotl(v1, 17); v1 ^= v2; v2 = _rotl(v2, 32)

    n = len(msg)
    full = n - n % 8
    for i in range(0, full, 8):
        (m,) = struct.unpack_from("<Q", msg, i)
        v3 ^= m
        rnd(); rnd()
        v0 ^= m
    last = (n & 0xFF) << 56
    for i, c in enumerate(msg[full:]):
        last |= c << (8 * i)
    v3 ^= last
    rnd(); rnd()
    v0 ^= last
    v2 ^= 0xFF
    rnd(); rnd(); rnd(); rnd()
    return v0 ^ v1 ^ v2 ^ v3


def bloom(props, size=64, k=8):
    m = size * 8
    b = m.bit_length() - 1
    s = 64 // b
    out = bytearray(size)
    for p in props:
        ws = {}
        for i in range(k):
            j, t = divmod(i, s)
            if j not in ws:
                ws[j] = siphash24(b"porter-bloom-v1" + bytes([j]), p.encode())
            pos = (ws[j] >> (t * b)) & (m - 1)
            out[pos // 8] |= 1 << (pos % 8)
    return bytes(out)


def properties(path, iface, member, args):
    """A signal's properties ("Properties"); args maps ARGS index to value."""
    props = ["path:" + path]
    if path != "/":
        elems = path.split("/")[1:]
        props += ["path-prefix:/" + "/".join(elems[:i]) for i in range(1, min(len(elems), 16) + 1)]
    props += ["interface:" + iface, "member:" + member]
    props += ["arg%d:%s" % (i, v) for i, v in sorted(args.items())]
    return props


def bloomcheck():
    assert properties("/org/example/a", "org.example.Foo", "Changed", {0: "hello"}) == [
        "path:/org/example/a", "path-prefix:/org", "path-prefix:/org/example",
        "path-prefix:/org/example/a", "interface:org.example.Foo", "member:Changed", "arg0:hello"]
    assert siphash24(bytes(range(16)), b"") == 0x726FDB47DD0E0E31
    props = ["path:/org/example/a", "path-prefix:/org", "path-prefix:/org/example",
             "path-prefix:/org/example/a", "interface:org.example.Foo", "member:Changed", "arg0:hello"]
    assert bloom(props).hex() == (
        "8400001000a060102c0100200064802000020002280040002000a02005060000"
        "0012010101030004801000081811044000080001040004000800000000000081"), bloom(props).hex()
    assert bloom(["interface:org.example.Foo", "member:Changed"]).hex() == (
        "0000001000204010000100000000002000000000200000000000800000000000"
        "0000000000010000800000000010040000000000040004000800000000000080")
    want = ("0000101100000080002000002a008040000800000000000010004002"
            "000008400000000200000000000000000000000000000100000200000400000000200104")
    got = bloom(["interface:org.freedesktop.DBus", "member:NameOwnerChanged", "arg0:com.example.peer"])
    assert got.hex() == want, got.hex()
    out("bloom ok")


# ---- an endpoint ---------------------------------------------------------

def out(*words):
    print(*words, flush=True)


class Endpoint:
    def __init__(self, path, label="busclient.py", flags=0):
        self.m = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.m.connect(path)
        self.serial = 0
        self.backlog = []  # frames from the master read while waiting for an answer
        self.names = set()  # names this address owns now (DONE, NameAcquired, NameLost)
        lab = label.encode()
        hello = Frame(HELLO, self.next_serial(), 0, BUS,
                      body=struct.pack("<IHH", flags, len(lab), 0) + lab)
        cred = struct.pack("<iII", os.getpid(), os.geteuid(), os.getegid())
        send_frame(self.m, hello, [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, cred)])
        f = recv_frame(self.m)
        if f is None:
            raise ProtocolError("master closed the connection after HELLO")
        if f.type == FAIL:
            raise ProtocolError("HELLO refused: %s %s" % fail_info(f)[::2])
        if f.type != WELCOME or f.reply_serial != hello.serial or len(f.body) < 104:
            raise ProtocolError("expected WELCOME, got type 0x%x" % f.type)
        global READ_BUF, MAX_FDS
        self.address = struct.unpack_from("<Q", f.body, 0)[0]
        self.max_frame, MAX_FDS, self.bloom_size, self.bloom_k = struct.unpack_from("<IHHB", f.body, 24)
        READ_BUF = self.max_frame
        (self.max_memfd,) = struct.unpack_from("<Q", f.body, 40)
        self.pid, self.uid, self.gid = struct.unpack_from("<III", f.body, 48)
        if f.dst != self.address or self.pid != os.getpid():
            raise ProtocolError("WELCOME for someone else")

    def next_serial(self):
        self.serial += 1
        return self.serial

    def request(self, typ, body):
        """Send a control request; return its DONE/INTRODUCE/... or raise on FAIL."""
        f = Frame(typ, self.next_serial(), self.address, BUS, body=body)
        send_frame(self.m, f)
        return self.wait_answer(f.serial)

    def wait_answer(self, serial):
        while True:
            a = recv_frame(self.m)
            if a is None:
                raise ProtocolError("master closed the connection")
            if (a.src == BUS and a.reply_serial == serial and a.type in (DONE, FAIL, INTRODUCE, WELCOME)
                    and F_MONITOR not in a.fields):  # not a monitor's copy of another's answer
                return a
            self.note(a)
            self.backlog.append(a)

    def note(self, f):
        """Track our names from the bus's unicast notices."""
        if f.src == BUS and f.type == SIGNAL and f.dst == self.address:
            member = f.field(F_MEMBER, b"").decode()
            name = args_field(f.field(F_ARGS, b"")).get(0, "")
            if member == "NameAcquired":
                self.names.add(name)
            elif member == "NameLost":
                self.names.discard(name)

    def next_master_frame(self):
        if self.backlog:
            return self.backlog.pop(0)
        f = recv_frame(self.m)
        if f is not None:
            self.note(f)
        return f

    def bye(self):
        try:
            a = self.request(BYE, b"")
            if a.type != DONE:
                raise ProtocolError("BYE answered with 0x%x" % a.type)
        finally:
            self.m.close()

    def request_name(self, name, flags):
        n = name.encode()
        a = self.request(REQUEST_NAME, struct.pack("<QIHH", self.address, flags, len(n), 0) + n)
        if a.type == FAIL:
            code, _, text = fail_info(a)
            raise ProtocolError("REQUEST_NAME %s: %s %s" % (name, CODES.get(code, code), text))
        (v,) = struct.unpack_from("<Q", a.body)
        if v in (1, 4):
            self.names.add(name)
        return v

    def connect(self, dest, routed=False):
        """CONNECT; return (sock, peer address, channel id) or a FAIL frame."""
        if dest.startswith(":"):
            addr, n = parse_addr(dest), b""
        else:
            addr, n = 0, dest.encode()
        a = self.request(CONNECT, struct.pack("<QQIHH", self.address, addr, 1 if routed else 0, len(n), 0) + n)
        if a.type == FAIL:
            return a
        if a.type != INTRODUCE:
            raise ProtocolError("CONNECT answered with 0x%x" % a.type)
        cid, local, peer, pid, uid, gid, mode, role, accepts = struct.unpack_from("<QQQIIIBBB", a.body)
        if local != self.address or role != 1:
            a.close_fds()
            raise ProtocolError("INTRODUCE not for this CONNECT")
        self.peer_accepts = accepts
        if mode == 1:
            if len(a.fds) != 1:
                raise ProtocolError("DIRECT INTRODUCE without its fd")
            ch = socket.socket(fileno=a.fds[0])
            ch.setblocking(True)  # ends arrive O_NONBLOCK; this client waits in recv
            return ch, peer, cid
        return None, peer, 0


def args_field(v):
    out_, off = {}, 0
    while off + 4 <= len(v):
        idx, kind, n = struct.unpack_from("<BBH", v, off)
        out_[idx] = v[off + 4:off + 4 + n].decode()
        off += 4 + n
    return out_


# ---- sealed memfds ("Large payloads: sealed memfds") ----------------------

def make_memfd(data, seals=ALL_SEALS):
    """A memfd holding data, sealed (no writable mapping was ever made)."""
    fd = os.memfd_create("busclient", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except Exception:
        os.close(fd)
        raise
    return fd


def memfd_field(size):
    return struct.pack("<QQ", size, 0)


def checksum(data):
    return sum(data) & 0xFFFFFFFF


def read_memfd(f, max_memfd):
    """Check f's memfd as a receiver must and return (size, sum of its bytes).

    Raises BadMemfd; the caller closes the frame's fds either way."""
    size, _ = struct.unpack("<QQ", f.field(F_MEMFD))
    if f.body:
        raise BadMemfd("inline body with MEMFD")
    fd = f.fds[-1]  # the memfd is the last attached fd
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as e:
        raise BadMemfd("F_GET_SEALS: %s" % e)
    if seals & ALL_SEALS != ALL_SEALS:
        raise BadMemfd("seals 0x%x, want all of 0x%x" % (seals, ALL_SEALS))
    st = os.fstat(fd).st_size
    if st != size:
        raise BadMemfd("st_size %d, MEMFD says %d" % (st, size))
    if size > max_memfd:
        raise BadMemfd("size %d above max_memfd %d" % (size, max_memfd))
    if size == 0:
        return 0, 0
    with mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ) as mm:
        with memoryview(mm) as v:
            return size, checksum(v)


class BadMemfd(Exception):
    pass


# ---- commands --------------------------------------------------------------

def cmd_join(ep, argv):
    out("address", fmt_addr(ep.address))
    ep.bye()


def call_options(argv):
    routed, unsealed, memfd = False, False, None
    while argv and argv[0].startswith("--"):
        if argv[0] == "--routed":
            routed, argv = True, argv[1:]
        elif argv[0] == "--unsealed":
            unsealed, argv = True, argv[1:]
        elif argv[0] == "--memfd":
            memfd, argv = int(argv[1]), argv[2:]
        else:
            raise SystemExit("call: unknown option " + argv[0])
    return routed, unsealed, memfd, argv


def cmd_call(ep, argv):
    routed, unsealed, memfd, argv = call_options(argv)
    dest, member, args = argv[0], argv[1], argv[2:]
    r = ep.connect(dest, routed)
    if isinstance(r, Frame):
        code, _, text = fail_info(r)
        out("fail", CODES.get(code, str(code)), text)
        ep.bye()
        return
    ch, peer, cid = r
    fields = {F_MEMBER: member.encode()}
    if not dest.startswith(":"):
        fields[F_DEST_NAME] = dest.encode()
    fds = []
    if memfd is None:
        sig, body = marshal_strings(args)
        fields[F_SIGNATURE] = sig.encode()
    else:
        if not ep.peer_accepts & 2:  # INTRODUCE: the peer takes no memfds
            out("fail", "FDS_REFUSED", "the peer accepts no memfds")
            ep.bye()
            return
        data = os.urandom(memfd)
        seals = ALL_SEALS & ~fcntl.F_SEAL_WRITE if unsealed else ALL_SEALS
        fds, body = [make_memfd(data, seals)], b""
        fields[F_MEMFD] = memfd_field(memfd)
        out("sent", "memfd", memfd, checksum(data))
    call = Frame(CALL, ep.next_serial(), ep.address, peer, fields=fields, body=body, fds=fds)
    via = "direct" if ch else "routed"
    try:
        send_frame(ch or ep.m, call)
    finally:
        call.close_fds()  # our copy: the receiver holds its own from here
    while True:
        if ch:
            f = recv_frame(ch)
            if f is None:
                out("fail", "PEER_GONE", "channel closed")
                break
            if f.src != peer or f.dst != ep.address or F_SENDER_CRED in f.fields:
                raise ProtocolError("forged frame on the channel")
        else:
            f = ep.next_master_frame()
            if f is None:
                raise ProtocolError("master closed the connection")
        if f.reply_serial != call.serial:
            f.close_fds()
            continue
        if f.type == REPLY:
            if ch is None and f.src != peer:
                f.close_fds()
                raise ProtocolError("reply from %d, not %d" % (f.src, peer))
            if F_MEMFD in f.fields:
                try:
                    size, total = read_memfd(f, ep.max_memfd)
                except BadMemfd as e:
                    f.close_fds()
                    raise ProtocolError("reply with a bad memfd: %s" % e)
                out("reply", via, "memfd", size, total)
            elif F_SIGNATURE not in f.fields and f.body:  # opaque bytes
                out("reply", via, "bytes", len(f.body), checksum(f.body))
            else:
                sig = f.field(F_SIGNATURE, b"").decode()
                out("reply", via, *unmarshal_strings(sig, f.body))
        elif f.type == ERROR:
            out("error", f.field(F_ERROR_NAME, b"").decode(), f.body.decode(errors="replace"))
        elif f.type == FAIL and f.src == BUS:
            code, _, text = fail_info(f)
            out("fail", CODES.get(code, str(code)), text)
        else:
            raise ProtocolError("unexpected answer type 0x%x" % f.type)
        f.close_fds()
        break
    if ch:
        send_frame(ch, Frame(END, ep.next_serial(), ep.address, peer))
        ch.close()
        ep.request(DISCONNECT, struct.pack("<Q", cid))
    ep.bye()


def reply_to(ep, sock, call, via, cred):
    member = call.field(F_MEMBER, b"").decode()
    dn = call.field(F_DEST_NAME)
    said = ["served", via, member, fmt_addr(call.src)] + list(cred)
    if dn is not None and dn.decode() not in ep.names:
        ans = Frame(ERROR, ep.next_serial(), ep.address, call.src, call.serial,
                    {F_ERROR_NAME: b"porter.Bus.Error.NameMoved"}, dn)
    elif F_MEMFD in call.fields:
        try:
            size, total = read_memfd(call, ep.max_memfd)
        except BadMemfd as e:
            ans = Frame(ERROR, ep.next_serial(), ep.address, call.src, call.serial,
                        {F_ERROR_NAME: b"porter.Bus.Error.BadMemfd"}, str(e).encode())
            said = ["refused", via, member, fmt_addr(call.src), "BadMemfd", str(e)]
        else:
            sig, body = marshal_strings([str(total)])
            ans = Frame(REPLY, ep.next_serial(), ep.address, call.src, call.serial,
                        {F_SIGNATURE: sig.encode()}, body)
            said += ["memfd", str(size), str(total)]
    else:
        fields = {}
        if F_SIGNATURE in call.fields:
            fields[F_SIGNATURE] = call.fields[F_SIGNATURE]
        ans = Frame(REPLY, ep.next_serial(), ep.address, call.src, call.serial, fields, call.body)
    call.close_fds()
    if not call.flags & 1:  # NO_REPLY_EXPECTED
        try:
            send_frame(sock, ans)
        except (BrokenPipeError, ConnectionResetError):
            if sock is ep.m:  # on a channel: the caller closed it, nobody to answer
                raise
    out(*said)


def cmd_serve(ep, argv):
    name = argv[0]
    count = int(argv[1]) if len(argv) > 1 else -1
    v = ep.request_name(name, 4)  # DO_NOT_QUEUE
    if v not in (1, 4):
        out("taken", name, v)
        ep.bye()
        return
    out("owner", name, fmt_addr(ep.address))
    chans = {}  # fd -> (socket, peer address, channel id, peer pid, peer uid)
    stdin_open = count < 0
    served = 0
    while count < 0 or served < count:
        rl = [ep.m] + [c[0] for c in chans.values()] + ([sys.stdin] if stdin_open else [])
        ready = [ep.m] if ep.backlog else select.select(rl, [], [])[0]
        for r in ready:
            if r is sys.stdin:
                if not sys.stdin.buffer.read1(1):
                    count = served  # stdin closed: stop
                continue
            if r is ep.m:
                f = ep.next_master_frame()
                if f is None:
                    raise ProtocolError("master closed the connection")
                if f.type == INTRODUCE:
                    cid, local, peer, pid, uid, gid, mode, role = struct.unpack_from("<QQQIIIBB", f.body)
                    if mode != 1 or role != 2 or len(f.fds) != 1 or local != ep.address:
                        f.close_fds()
                        raise ProtocolError("unexpected INTRODUCE")
                    s = socket.socket(fileno=f.fds[0])
                    s.setblocking(True)
                    chans[s.fileno()] = (s, peer, cid, pid, uid)
                elif f.type == REVOKE:
                    rcid, reason = struct.unpack_from("<QB", f.body)
                    for fd, (s, peer, cid, *_) in list(chans.items()):
                        if cid != rcid:
                            continue
                        # serve answers each call as it reads it, so it owes
                        # none: MONITOR ends the channel gracefully (END,
                        # close, DISCONNECT); POLICY and GONE close at once,
                        # and the master expects no DISCONNECT.
                        if reason == 2:
                            try:
                                send_frame(s, Frame(END, ep.next_serial(), ep.address, peer))
                            except (BrokenPipeError, ConnectionResetError):
                                pass
                        del chans[fd]
                        s.close()
                        if reason == 2:
                            send_frame(ep.m, Frame(DISCONNECT, ep.next_serial(), ep.address, BUS,
                                                   body=struct.pack("<Q", cid)))
                        out("revoked", cid, reason)
                elif f.type == CALL and f.src != BUS:
                    cred = f.field(F_SENDER_CRED)
                    if cred is None:
                        f.close_fds()
                        raise ProtocolError("routed CALL without SENDER_CRED")
                    pid, uid, gid = struct.unpack_from("<III", cred)
                    reply_to(ep, ep.m, f, "routed", (str(pid), str(uid)))
                    served += 1
                else:
                    f.close_fds()  # notices, DONE of DISCONNECT, ...
                continue
            if r.fileno() not in chans:
                continue  # closed above, on a REVOKE read in this round
            s, peer, cid, pid, uid = chans[r.fileno()]
            f = recv_frame(s)
            if f is None or f.type == END:
                if f is not None:
                    try:  # the caller may have closed right after its END
                        send_frame(s, Frame(END, ep.next_serial(), ep.address, peer))
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                del chans[s.fileno()]
                s.close()
                send_frame(ep.m, Frame(DISCONNECT, ep.next_serial(), ep.address, BUS,
                                       body=struct.pack("<Q", cid)))
                continue
            if f.src != peer or f.dst != ep.address or F_SENDER_CRED in f.fields or f.type not in (CALL, SIGNAL):
                f.close_fds()
                raise ProtocolError("forged or misdirected frame on channel %d" % cid)
            if f.type == CALL:
                reply_to(ep, s, f, "direct", (str(pid), str(uid)))
                served += 1
            else:
                f.close_fds()
    for s, *_ in chans.values():
        s.close()
    ep.bye()


def cmd_watch(ep, argv):
    name = argv[0]
    count = int(argv[1]) if len(argv) > 1 else -1
    rules = [(3, 0, "org.freedesktop.DBus"), (4, 0, "NameOwnerChanged"), (5, 0, name)]
    bl = bloom(["interface:org.freedesktop.DBus", "member:NameOwnerChanged", "arg0:" + name],
               ep.bloom_size, ep.bloom_k)
    body = struct.pack("<QQHHI", 1, BUS, ep.bloom_size, len(rules), 0) + bl
    for kind, idx, v in rules:
        b = v.encode()
        body += struct.pack("<BBH", kind, idx, len(b)) + b
    a = ep.request(ADD_MATCH, body)
    if a.type != DONE:
        raise ProtocolError("ADD_MATCH: %s %s" % fail_info(a)[::2])
    out("watching", name)
    seen = 0
    while count < 0 or seen < count:
        f = ep.next_master_frame()
        if f is None:
            raise ProtocolError("master closed the connection")
        f.close_fds()
        if f.type != SIGNAL or f.src != BUS or f.field(F_MEMBER) != b"NameOwnerChanged":
            continue
        args = args_field(f.field(F_ARGS, b""))
        old, new = struct.unpack_from("<QQ", f.body)
        if args.get(0) != name:
            raise ProtocolError("notice for %r" % args.get(0))
        if args.get(1, "") != (fmt_addr(old) if old else "") or args.get(2, "") != (fmt_addr(new) if new else ""):
            raise ProtocolError("ARGS and body disagree")
        out("changed", name, args.get(1) or "-", args.get(2) or "-")
        seen += 1
    ep.bye()


def args_entries(args):
    """The ARGS field for string arguments (the first 16), and its index map."""
    entries, v = {}, b""
    for i, a in enumerate(args[:16]):
        b = a.encode()
        v += struct.pack("<BBH", i, 1, len(b)) + b
        entries[i] = a
    return v, entries


def cmd_publish(ep, argv):
    path, iface, member, args = argv[0], argv[1], argv[2], argv[3:]
    sig, body = marshal_strings(args)
    av, entries = args_entries(args)
    fields = {F_PATH: path.encode(), F_INTERFACE: iface.encode(), F_MEMBER: member.encode(),
              F_SIGNATURE: sig.encode(),
              F_BLOOM: bloom(properties(path, iface, member, entries), ep.bloom_size, ep.bloom_k)}
    if av:
        fields[F_ARGS] = av
    sigf = Frame(SIGNAL, ep.next_serial(), ep.address, 0, fields=fields, body=body)
    send_frame(ep.m, sigf)
    # A multicast has no answer; a refusal is a FAIL with our serial. The
    # master handles one connection's frames in order, so it comes before
    # the DONE of the BYE sent after it.
    ep.bye()
    for f in ep.backlog:
        if f.type == FAIL and f.src == BUS and f.reply_serial == sigf.serial:
            code, _, text = fail_info(f)
            out("fail", CODES.get(code, str(code)), text)
            return
    out("published", fmt_addr(ep.address))


def next_until_stdin_closes(ep):
    """The next frame from the master, or None once stdin is closed."""
    while not ep.backlog and sys.stdin in select.select([ep.m, sys.stdin], [], [])[0]:
        if not sys.stdin.buffer.read1(1):
            return None
    f = ep.next_master_frame()
    if f is None:
        raise ProtocolError("master closed the connection")
    return f


def cmd_listen(ep, argv):
    hold = bool(argv) and argv[0] == "--hold"
    if hold:
        argv = argv[1:]
    iface, member = argv[0], argv[1]
    arg0 = argv[2] if len(argv) > 2 and argv[2] else None
    count = int(argv[3]) if len(argv) > 3 else -1
    rules = [(3, 0, iface), (4, 0, member)]
    props = ["interface:" + iface, "member:" + member]
    if arg0 is not None:
        rules.append((5, 0, arg0))
        props.append("arg0:" + arg0)
    body = struct.pack("<QQHHI", 1, 0, ep.bloom_size, len(rules), 0) + bloom(props, ep.bloom_size, ep.bloom_k)
    for kind, idx, v in rules:
        b = v.encode()
        body += struct.pack("<BBH", kind, idx, len(b)) + b
    a = ep.request(ADD_MATCH, body)
    if a.type != DONE:
        raise ProtocolError("ADD_MATCH: %s %s" % fail_info(a)[::2])
    out("listening")
    if hold:
        sys.stdin.buffer.readline()
    seen = 0
    while count < 0 or seen < count:
        f = next_until_stdin_closes(ep) if hold else ep.next_master_frame()
        if f is None:
            if hold:
                break  # stdin closed
            raise ProtocolError("master closed the connection")
        f.close_fds()
        if f.type != SIGNAL:
            continue
        fiface = f.field(F_INTERFACE, b"").decode()
        fmember = f.field(F_MEMBER, b"").decode()
        if f.src == BUS and f.dst == ep.address and (fiface, fmember) == ("porter.Bus", "Lost"):
            since, total = struct.unpack_from("<QQ", f.body)
            out("lost", since, total)
            continue
        if f.dst != 0:
            continue  # unicast: not what a match selects
        args = args_field(f.field(F_ARGS, b""))
        if fiface != iface or fmember != member or (arg0 is not None and args.get(0) != arg0):
            raise ProtocolError("delivered a signal the match does not select: %s.%s %r" % (fiface, fmember, args))
        if f.src != BUS and F_SENDER_CRED not in f.fields:
            raise ProtocolError("multicast signal without SENDER_CRED")
        sig = f.field(F_SIGNATURE, b"").decode()
        out("signal", fmt_addr(f.src), f.field(F_PATH, b"").decode(), fiface + "." + fmember,
            *unmarshal_strings(sig, f.body))
        seen += 1
    ep.bye()


def fmt_monitor_addr(a):
    return {0: "0", BUS: ":bus"}.get(a) or fmt_addr(a)


def cmd_monitor(ep, argv):
    global MONITORING
    a = ep.request(BECOME_MONITOR, struct.pack("<I", 0))
    if a.type != DONE:
        raise ProtocolError("BECOME_MONITOR: %s %s" % fail_info(a)[::2])
    MONITORING = True
    drained, unconfirmed = struct.unpack_from("<QQ", a.body)
    out("monitoring", drained, unconfirmed)
    while True:
        f = next_until_stdin_closes(ep)
        if f is None:
            break
        if f.fds:
            f.close_fds()
            raise ProtocolError("an fd reached the monitor")
        if F_MONITOR not in f.fields:
            if f.src == BUS and f.dst == ep.address and f.type == SIGNAL:
                continue  # the bus's unicast notices to us (Lost), not copies
            raise ProtocolError("type 0x%x without a MONITOR field" % f.type)
        frm, to, _, onfds, mflags = struct.unpack_from("<QQQHB", f.field(F_MONITOR))
        words = ["copy", TYPE_NAMES.get(f.type, "0x%x" % f.type), fmt_monitor_addr(frm),
                 fmt_monitor_addr(to), f.serial, f.reply_serial]
        if F_MEMBER in f.fields:
            words.append("member=" + f.field(F_MEMBER).decode())
        if F_MEMFD in f.fields:
            if not mflags & 1:
                raise ProtocolError("MEMFD field without the monitor's memfd flag")
            words.append("memfd=%d" % struct.unpack_from("<Q", f.field(F_MEMFD))[0])
        if onfds:
            words.append("nfds=%d" % onfds)
        if mflags & 2:
            words.append("refused")
        out(*words)
    ep.bye()


def main(argv):
    path = os.environ.get("PORTER_BUS", "")
    label = "busclient.py"
    while argv and argv[0].startswith("--"):
        if argv[0] == "--bus":
            path, argv = argv[1], argv[2:]
        elif argv[0] == "--label":
            label, argv = argv[1], argv[2:]
        else:
            break
    if not argv:
        sys.exit(__doc__)
    cmd, argv = argv[0], argv[1:]
    if cmd == "bloomcheck":
        return bloomcheck()
    if not path:
        rt = os.environ.get("XDG_RUNTIME_DIR")
        path = "/run/porter/bus" if os.geteuid() == 0 or not rt else rt + "/porter/bus"
    cmds = {"join": cmd_join, "call": cmd_call, "serve": cmd_serve, "watch": cmd_watch,
            "publish": cmd_publish, "listen": cmd_listen, "monitor": cmd_monitor}
    if cmd not in cmds:
        sys.exit(__doc__)
    # serve and call take memfd bodies (a call's reply may come as one); no fds.
    ep = Endpoint(path, label, ACCEPT_MEMFD if cmd in ("serve", "call") else 0)
    cmds[cmd](ep, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
