#!/usr/bin/env python3
"""A skill that keeps connecting while the interceptor restarts or upgrades.

Usage: gap_probe.py NAME OUT.json STOP_FILE. Runs in skills.slice until
STOP_FILE appears. Every 20 ms it opens a new
connection to the plain-HTTP API (allowed, token injected) and one to the
denied internal port, and records what happened. Writes a JSON summary:
outcomes by kind, the longest stretch without a successful request (the
gap), and anything that would be a bypass (an answer without the injected
token, or a connection the internal port accepted).
"""
import errno
import json
import os
import socket
import sys
import time

NAME, OUT, STOP_FILE = sys.argv[1], sys.argv[2], sys.argv[3]


def attempt(port, send):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("127.0.0.1", port))
        if send:
            s.sendall(send)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        if data.startswith(b"INTERNAL"):
            return "internal"
        if b'"authorized": true' in data:
            return "ok"
        if not data:
            return "closed"
        if b'"authorized": false' in data:
            return "unauthorized"
        # Anything else (a 503 from a daemon shutting down, say): keep its
        # status line for the summary.
        return "other-answer: " + data.split(b"\r\n", 1)[0].decode("latin-1")
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e)) if e.errno else type(e).__name__
    finally:
        s.close()


counts, bypass, others = {}, [], []
last_ok = time.monotonic()
longest_gap = 0.0
n = 0
while not os.path.exists(STOP_FILE):
    n += 1
    req = ("GET /v1/items HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Probe: %s-%d\r\n"
           "Connection: close\r\n\r\n" % (NAME, n)).encode()
    r = attempt(8080, req)
    if r.startswith("other-answer: "):
        others.append(r[len("other-answer: "):])
        r = "other-answer"
    counts[r] = counts.get(r, 0) + 1
    now = time.monotonic()
    if r == "ok":
        longest_gap = max(longest_gap, now - last_ok)
        last_ok = now
    elif r == "unauthorized":
        bypass.append("request %d reached the API without the injected token" % n)
    # connect() itself succeeds (to the proxy, which then refuses): only the
    # internal service's greeting would mean the connection got through.
    i = attempt(8444, None)
    if i == "internal":
        bypass.append("connection %d reached the denied internal port" % n)
    time.sleep(0.02)

with open(OUT + ".tmp", "w") as f:
    json.dump({"attempts": n, "outcomes": counts, "longest_gap_s": round(longest_gap, 3),
               "bypass": bypass, "other_answers": others[:5]}, f)
os.rename(OUT + ".tmp", OUT)
