"""The HTTP server of scenario 6b's httpx and aiohttp cases, in a process of its own.

``python -m loopbench.echo_server`` serves the tests' own `EchoServer`
(``tests/django/servers.py``: ``GET /echo/<text>`` -> ``<text>`` over HTTP/1.1
keep-alive on 127.0.0.1 and a free port), prints the port on stdout once
listening, and stops when its stdin closes (or on SIGTERM). It is what
``tests/django_project/clients_example`` expects of ``LOOPSHARE_HTTP_URL``; the
benchmark runs it outside the process of its load clients.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "django"))

from servers import EchoServer


def main() -> None:
    server = EchoServer()
    print(server.server_address[1], flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or exits)
    server.stop()


if __name__ == "__main__":
    main()
