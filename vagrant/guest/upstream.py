#!/usr/bin/env python3
"""The VM suite's upstream API (runs as its own unit, outside skills.slice).

  https://upstream.vm.test:8443  the API: needs a token the skill never has
  http://127.0.0.1:8080          the same API in plain HTTP (restart/upgrade probes)
  127.0.0.1:8444                 an internal service the policy denies: any
                                 connection that reaches it is a bypass (it
                                 greets with "INTERNAL")

Every request is appended to requests.log as JSON, with whether it carried the
injected token; every connection to the internal port to internal.log.
"""
import http.server
import json
import os
import socket
import ssl
import sys
import threading

STATE = sys.argv[1] if len(sys.argv) > 1 else "/var/lib/vm-upstream"
TOKEN = open(os.path.join(STATE, "token")).read().strip()
LOCK = threading.Lock()


def log(name, record):
    with LOCK, open(os.path.join(STATE, name), "a") as f:
        f.write(json.dumps(record) + "\n")


class Api(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        auth = self.headers.get("Authorization", "")
        authorized = auth == "Bearer " + TOKEN
        log("requests.log", {
            "port": self.server.server_address[1],
            "method": self.command,
            "path": self.path,
            "authorized": authorized,
            "client": self.headers.get("X-Probe", ""),
        })
        if self.path.startswith("/v1/customers"):
            # Production data a skill must not read in the clear.
            self.answer(200, {"customers": [{
                "name": "Ann Lee", "email": "ann.lee@example.com",
                "card": "4111 1111 1111 1111"}]})
        elif self.path.startswith("/v1/debug"):
            # A careless endpoint that echoes the caller's credentials.
            self.answer(200, {"debug": {"authorization": auth}})
        elif self.path.startswith("/admin"):
            self.answer(200, {"admin": "all users", "authorized": authorized})
        elif self.command == "POST" and self.path.startswith("/v1/deploy"):
            self.answer(200, {"deployed": True, "authorized": authorized})
        else:
            self.answer(200, {"path": self.path, "authorized": authorized})

    do_GET = do_POST = do_PUT = do_DELETE = handle_any


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve_internal():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 8444))
    s.listen(64)
    while True:
        c, peer = s.accept()
        log("internal.log", {"peer": peer[0]})
        try:
            c.sendall(b"INTERNAL\n")
        except OSError:
            pass
        c.close()


def main():
    tls = Server(("127.0.0.1", 8443), Api)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(STATE, "upstream.crt"), os.path.join(STATE, "upstream.key"))
    tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
    plain = Server(("127.0.0.1", 8080), Api)
    for target in (tls.serve_forever, plain.serve_forever, serve_internal):
        threading.Thread(target=target, daemon=True).start()
    # Ready for Type=notify-less units: the listeners are bound above.
    open(os.path.join(STATE, "ready"), "w").close()
    threading.Event().wait()


if __name__ == "__main__":
    main()
