#!/usr/bin/env python3
"""A skill that sends requests until the power is cut, printing the number
of each one that was answered (200) as soon as it was: what it printed is
what the interceptor acknowledged. Used by suite.sh's power-cut phase.

    acked_load.py THREADS
"""
import http.client
import sys
import threading

THREADS = int(sys.argv[1])
lock = threading.Lock()
counter = iter(range(1, 10**9))


def worker():
    conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=30)
    while True:
        with lock:
            n = next(counter)
        try:
            conn.request("GET", f"/v1/items?pc={n}")
            resp = conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=30)
            continue
        if resp.status == 200:
            with lock:
                print(n, flush=True)


for _ in range(THREADS):
    threading.Thread(target=worker, daemon=True).start()
threading.Event().wait()
