"""The HTTP server of scenario 6b's httpx and aiohttp cases, in a process of its own.

``python -m loopbench.echo_server`` serves ``GET /echo/<text>`` -> ``<text>``
over HTTP/1.1 keep-alive on 127.0.0.1 and a free port, prints the port on
stdout once listening, and stops when its stdin closes (or on SIGTERM). What
``tests/django_project/clients_example`` expects of ``LOOPSHARE_HTTP_URL``; the
tests' own server (``EchoServer`` in ``tests/django/test_real_clients.py``)
lives in the test process and needs pytest, so the benchmark runs this one,
outside the process of its load clients.
"""

from __future__ import annotations

import http.server
import sys
import threading
from typing import Any


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection ends after this
    # Headers and body go out in two writes: without TCP_NODELAY the body
    # waits for the client's delayed ACK (~40 ms a reply on Linux).
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        if self.path.startswith("/echo/"):
            status, body = 200, self.path[len("/echo/") :].encode()
        else:
            status, body = 404, b"not found"
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or exits)
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    main()
