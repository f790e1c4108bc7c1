"""A skill stand-in for the end-to-end tests: plain sockets, run inside the
workload cgroup. Every mode prints one JSON object on stdout.

  echo HOST PORT SIZE     send SIZE deterministic bytes, read the echo back
  concurrent HOST PORT N  N connections at once through asyncio, each echoed
  connect HOST PORT       try a connect, report the errno
  hold HOST PORT          connect, report addresses, wait for a line on stdin
  bind HOST PORT          try to bind, report the errno
  udp HOST PORT           try a UDP sendto, report the errno
  hammer HOST P1,P2 SECS  connect in a loop, count what got through
  socket FAMILY TYPE PROTO   try socket(), report the errno (numbers)
  ping HOST               an ICMP ping socket sendto, report the errno
  listen HOST PORT SECS   bind+listen (PORT 0: listen() without bind), report
                          the port, then wait SECS for a connection and read
  autobind N              N listen() calls without bind(), report the ports
  acceptloop PORT SECS    listen on 0.0.0.0:PORT, accept and close for SECS
  selfserve PORT          listen on 127.0.0.1:PORT, send an HTTP request to
                          that same address (redirected to the proxy), report
                          what the listener received and the answer
  badconnect HOST PORT    connect() with a wrong address family first, then
                          connect the same socket to HOST:PORT
"""
import asyncio
import hashlib
import json
import os
import socket
import sys
import threading


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def me():
    return {"pid": os.getpid(), "exe": os.readlink("/proc/self/exe")}


def out(d):
    print(json.dumps(d), flush=True)


def pattern(size):
    """Deterministic, incompressible-looking bytes, generated in blocks."""
    block = hashlib.sha256(b"interceptor").digest() * 2048  # 64 KiB
    sent = 0
    while sent < size:
        chunk = block[: min(len(block), size - sent)]
        yield chunk
        sent += len(chunk)
        block = hashlib.sha256(block[:32]).digest() * 2048


def echo(host, port, size):
    s = socket.socket(family(host), socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect((host, port))
    info = dict(me(), peer=list(s.getpeername())[:2], local=list(s.getsockname())[:2])
    sent_hash = hashlib.sha256()

    def send():
        for chunk in pattern(size):
            sent_hash.update(chunk)
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=send)
    t.start()
    got = hashlib.sha256()
    n = 0
    while True:
        b = s.recv(1 << 16)
        if not b:
            break
        got.update(b)
        n += len(b)
    t.join()
    s.close()
    out(dict(info, sent=size, received=n, sent_sha256=sent_hash.hexdigest(), received_sha256=got.hexdigest()))


async def exchange(i, r, w):
    payload = (f"conn-{i}-".encode() * 4096)[:65536]
    w.write(payload)
    await w.drain()
    w.write_eof()
    back = await r.read()
    w.close()
    return back == payload


async def concurrent(host, port, n):
    # Every connection is open before the first byte is sent.
    opened = await asyncio.wait_for(
        asyncio.gather(*(asyncio.open_connection(host, port) for _ in range(n)), return_exceptions=True), 60
    )
    conns = [c for c in opened if not isinstance(c, BaseException)]
    refused = [repr(c) for c in opened if isinstance(c, BaseException)]
    results = await asyncio.wait_for(
        asyncio.gather(*(exchange(i, r, w) for i, (r, w) in enumerate(conns)), return_exceptions=True), 120
    )
    ok = sum(1 for r in results if r is True)
    errors = (refused + [repr(r) for r in results if r is not True])[:5]
    out({"ok": ok, "n": n, "refused": len(refused), "errors": errors})


def try_connect(host, port):
    s = socket.socket(family(host), socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect((host, port))
        # Before the exchange: once both sides closed, getpeername fails.
        peer = list(s.getpeername())[:2]
        # A redirected connect succeeds at TCP level; a denied one is reset.
        s.sendall(b"ping\n")
        s.shutdown(socket.SHUT_WR)
        data = s.recv(100)
        out(dict(me(), connected=True, errno=0, data=data.decode(errors="replace"), peer=peer))
    except OSError as e:
        out(dict(me(), connected=False, errno=e.errno or 0, error=str(e)))
    finally:
        s.close()


def hold(host, port):
    s = socket.socket(family(host), socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect((host, port))
    out(dict(me(), peer=list(s.getpeername())[:2], local=list(s.getsockname())[:2]))
    sys.stdin.readline()
    s.close()


def hammer(host, ports, seconds):
    """Connect in a loop for `seconds` to each port in turn; count outcomes."""
    import time
    end = time.monotonic() + seconds
    through, failed = 0, {}
    i = 0
    while time.monotonic() < end:
        port = ports[i % len(ports)]
        i += 1
        s = socket.socket(family(host), socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect((host, port))
            s.sendall(b"x")
            s.shutdown(socket.SHUT_WR)
            if s.recv(10) == b"x":
                through += 1
            else:
                failed["empty"] = failed.get("empty", 0) + 1
        except OSError as e:
            failed[str(e.errno)] = failed.get(str(e.errno), 0) + 1
        finally:
            s.close()
    out({"attempts": i, "through": through, "failed": failed})


def try_bind(host, port):
    s = socket.socket(family(host), socket.SOCK_STREAM)
    # TIME_WAIT leftovers of the daemon's port must not answer for the hook.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
        out({"bound": True, "errno": 0})
    except OSError as e:
        out({"bound": False, "errno": e.errno or 0, "error": str(e)})


def try_udp(host, port):
    try:
        s = socket.socket(family(host), socket.SOCK_DGRAM)
        s.sendto(b"x", (host, port))
        out({"sent": True, "errno": 0})
    except OSError as e:
        out({"sent": False, "errno": e.errno or 0, "error": str(e)})


def try_socket(fam, typ, proto):
    try:
        s = socket.socket(fam, typ, proto)
        s.close()
        out({"created": True, "errno": 0})
    except OSError as e:
        out({"created": False, "errno": e.errno or 0, "error": str(e)})


def ping(host):
    """An unprivileged ICMP echo request carrying a payload."""
    fam, proto = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if ":" in host else (socket.AF_INET, socket.IPPROTO_ICMP)
    try:
        s = socket.socket(fam, socket.SOCK_DGRAM, proto)
        kind = 128 if fam == socket.AF_INET6 else 8
        s.sendto(bytes([kind, 0, 0, 0, 0, 1, 0, 1]) + b"exfiltrated-secret", (host, 0))
        out({"sent": True, "errno": 0})
    except OSError as e:
        out({"sent": False, "errno": e.errno or 0, "error": str(e)})


def listen(host, port, secs):
    s = socket.socket(family(host), socket.SOCK_STREAM)
    try:
        if port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
        s.listen(8)
    except OSError as e:
        out({"listening": False, "errno": e.errno or 0, "error": str(e)})
        return
    out({"listening": True, "port": s.getsockname()[1]})
    s.settimeout(secs)
    try:
        c, peer = s.accept()
        c.settimeout(secs)
        data = c.recv(100)
        c.sendall(b"pong:" + data)
        c.close()
        out({"accepted": True, "peer": list(peer)[:2], "data": data.decode(errors="replace")})
    except OSError as e:
        out({"accepted": False, "error": str(e)})


def autobind(n):
    ports, errors, keep = [], [], []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.listen(1)
            ports.append(s.getsockname()[1])
            keep.append(s)
        except OSError as e:
            errors.append(e.errno)
    out({"ports": ports, "errors": errors})


def acceptloop(port, secs):
    import time
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(1024)
    out({"listening": True})
    end = time.monotonic() + secs
    srv.settimeout(1)
    n = 0
    while time.monotonic() < end:
        try:
            c, _ = srv.accept()
            c.close()
            n += 1
        except socket.timeout:
            pass
    out({"accepted": n})


def selfserve(port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(4)
    srv.settimeout(3)
    got = {}

    def serve():
        try:
            c, _ = srv.accept()
            c.settimeout(3)
            data = b""
            while b"\r\n\r\n" not in data:
                b = c.recv(4096)
                if not b:
                    break
                data += b
            got["request"] = data.decode(errors="replace")
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            c.close()
        except OSError as e:
            got["error"] = str(e)

    t = threading.Thread(target=serve)
    t.start()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    answer = ""
    try:
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /self HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        while True:
            b = s.recv(4096)
            if not b:
                break
            answer += b.decode(errors="replace")
    except OSError as e:
        answer += f"[{e}]"
    t.join()
    out({"received": got.get("request", ""), "error": got.get("error", ""), "answer": answer})


def badconnect(host, port):
    import ctypes
    import struct
    libc = ctypes.CDLL(None, use_errno=True)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    # A sockaddr_in6 (family 10, 28 bytes) to port 443 on an AF_INET socket:
    # the kernel runs the cgroup connect hook (which would record 0.0.0.0:443
    # and rewrite it), then fails the connect (EAFNOSUPPORT).
    addr = struct.pack("<H", socket.AF_INET6) + struct.pack(">H", 443) + b"\0" * 4 + socket.inet_pton(socket.AF_INET6, "::1") + b"\0" * 4
    buf = ctypes.create_string_buffer(addr, len(addr))
    rc = libc.connect(s.fileno(), buf, len(addr))
    first = ctypes.get_errno() if rc != 0 else 0
    try:
        s.connect((host, port))
        s.sendall(b"x")
        data = s.recv(100)
        out({"first_errno": first, "connected": True, "errno": 0, "data": data.decode(errors="replace")})
    except OSError as e:
        out({"first_errno": first, "connected": False, "errno": e.errno or 0, "error": str(e)})


def main():
    mode, host = sys.argv[1], sys.argv[2]
    port = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3].isdigit() else 0
    if mode == "echo":
        echo(host, port, int(sys.argv[4]))
    elif mode == "concurrent":
        asyncio.run(concurrent(host, port, int(sys.argv[4])))
    elif mode == "connect":
        try_connect(host, port)
    elif mode == "hold":
        hold(host, port)
    elif mode == "hammer":
        hammer(host, [int(p) for p in sys.argv[3].split(",")], float(sys.argv[4]))
    elif mode == "bind":
        try_bind(host, port)
    elif mode == "udp":
        try_udp(host, port)
    elif mode == "socket":
        try_socket(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    elif mode == "ping":
        ping(host)
    elif mode == "listen":
        listen(host, port, float(sys.argv[4]))
    elif mode == "autobind":
        autobind(int(sys.argv[2]))
    elif mode == "acceptloop":
        acceptloop(int(sys.argv[2]), float(sys.argv[3]))
    elif mode == "selfserve":
        selfserve(int(sys.argv[2]))
    elif mode == "badconnect":
        badconnect(host, port)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
