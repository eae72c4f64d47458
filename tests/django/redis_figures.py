"""Print the Redis figures, stock Django vs the adapter, for every server.

    python tests/django/redis_figures.py [requests]

Runs the example project behind runserver, gunicorn (gthread, 4 threads) and
waitress (4 threads), each with its own redis-server on 127.0.0.1, with and
without the adapter, for the module-level client (``/redis/``) and the
client-per-loop (``/redis/per-loop/``), one request at a time and 4 clients at
once. Bounded: every request times out, every server is stopped.
"""

from __future__ import annotations

import sys

from servers import KINDS, DjangoServer, measure_redis


def main(requests: int) -> None:
    for kind in KINDS:
        for adapter in (False, True):
            server = DjangoServer(kind, adapter)
            try:
                for path in ("/redis/", "/redis/per-loop/"):
                    print(measure_redis(server, path, requests).line(), flush=True)
                    if kind != "runserver":
                        figures = measure_redis(server, path, requests * 2, 4)
                        print(figures.line(), flush=True)
            finally:
                server.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
