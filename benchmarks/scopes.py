#!/usr/bin/env python3
"""Redis connections opened over N requests on gunicorn gthread: per-request vs
per-thread loop scope (and stock asgiref for reference).

    python benchmarks/scopes.py [--requests 1000] [--json out.json]

Self-contained: it starts its own redis-server and, per mode, its own gunicorn
(``--worker-class gthread --workers 1 --threads 4``) on 127.0.0.1 and free
ports, serving the Flask app defined below (``scopes:create_app()``), sends a
fixed number of requests from 4 client threads (keep-alive connections), and
reads Redis's ``INFO stats`` ``total_connections_received`` before and after.
Everything it starts is stopped in ``finally``; every wait is bounded, and each
mode has a time cap. Needs, in the running interpreter: ``flask[async]``,
``redis>=5``, ``gunicorn``, and asgiref-loopshare (this repository is put on
``PYTHONPATH``); and a ``redis-server`` binary.

The app: an async ``before_request``, an async view and an async
``after_request`` each run one Redis command through a ``redis.asyncio``
client. A client's connections belong to the loop that opened them, so the app
keeps one client per event loop (a module-level registry: requests served at
once by 4 threads run on different loops); an async ``teardown_request`` closes
the current loop's client unless the loop outlives the request.

Modes:

- ``stock``: no integration. Flask runs each async hook through
  ``async_to_sync`` with a loop of its own: one client, one connection per hook.
- ``request``: ``LoopShare(app)``: one loop per request, its client closed at
  teardown: one connection per request.
- ``thread``: ``LoopShare(app, scope="thread")``: one loop per gunicorn worker
  thread, its client kept: one connection per thread, for all its requests.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODES = ("stock", "request", "thread")
CLIENT_THREADS = 4
GUNICORN_THREADS = 4
START_TIMEOUT = 60.0
REQUEST_TIMEOUT = 15.0

# --------------------------------------------------------------------- the app


def create_app() -> Any:
    """The Flask app gunicorn serves (``scopes:create_app()``)."""
    from flask import Flask, Response, request
    from redis.asyncio import Redis

    mode = os.environ["LOOPSHARE_BENCH_MODE"]
    url = os.environ["LOOPSHARE_BENCH_REDIS_URL"]
    clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Redis] = (
        weakref.WeakKeyDictionary()
    )

    def client() -> Redis:
        loop = asyncio.get_running_loop()
        found = clients.get(loop)
        if found is None:
            found = clients[loop] = Redis.from_url(url)
        return found

    app = Flask("loopshare_scopes")

    @app.before_request
    async def before() -> None:
        if request.path != "/health":  # the readiness probe stays off Redis
            await client().incr("scopes:before")

    @app.route("/")
    async def view() -> str:
        return str(await client().incr("scopes:view"))

    @app.route("/health")
    def health() -> str:
        return "ok"

    @app.after_request
    async def after(response: Response) -> Response:
        if request.path != "/health":
            await client().incr("scopes:after")
        return response

    @app.teardown_request
    async def teardown(exc: BaseException | None) -> None:
        if mode != "thread":
            found = clients.pop(asyncio.get_running_loop(), None)
            if found is not None:
                await found.aclose()

    if mode != "stock":
        from asgiref_loopshare.flask import LoopShare

        LoopShare(app, scope="thread" if mode == "thread" else "request")
    return app


# ------------------------------------------------------------------ the driver


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"gave up after {timeout}s waiting for {what}")


class RedisServer:
    def __init__(self, binary: str) -> None:
        import redis

        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [
                binary,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--maxclients", "10000"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.admin = redis.Redis(port=self.port, socket_timeout=REQUEST_TIMEOUT)
        try:
            wait_until(self._pings, START_TIMEOUT, "redis-server")
        except BaseException:
            self.stop()
            raise

    def _pings(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")
        try:
            return bool(self.admin.ping())
        except Exception:
            return False

    def connections_received(self) -> int:
        return int(self.admin.info("stats")["total_connections_received"])

    def connected_clients(self) -> int:
        """Connected now, not counting the admin connection."""
        return int(self.admin.info("clients")["connected_clients"]) - 1

    def stop(self) -> None:
        self.admin.close()
        stop(self.process)


def gunicorn_command(port: int) -> list[str]:
    command = [sys.executable, "-m", "gunicorn", "--worker-class", "gthread"]
    command += ["--workers", "1", "--threads", str(GUNICORN_THREADS)]
    command += ["--bind", f"127.0.0.1:{port}", "--chdir", str(HERE)]
    command += ["--graceful-timeout", "5", "--log-level", "warning"]
    helptext = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    if "--no-control-socket" in helptext:
        # gunicorn >= 25.1 opens $HOME/.gunicorn/gunicorn.ctl otherwise.
        command.append("--no-control-socket")
    return [*command, "scopes:create_app()"]


@dataclass
class Figure:
    mode: str
    requests: int
    ok: int
    failed: int
    connections_opened: int
    connections_open_after: int
    seconds: float
    server_tracebacks: int

    @property
    def per_request(self) -> float:
        return self.connections_opened / max(self.requests, 1)


def drive(port: int, requests: int, time_cap: float) -> tuple[int, int]:
    """*requests* GETs from CLIENT_THREADS keep-alive clients; (ok, failed)."""
    lock = threading.Lock()
    counts = {"ok": 0, "failed": 0, "sent": 0}
    deadline = time.monotonic() + time_cap

    def take() -> bool:
        with lock:
            if counts["sent"] >= requests or time.monotonic() > deadline:
                return False
            counts["sent"] += 1
            return True

    def client() -> None:
        connection: http.client.HTTPConnection | None = None
        while take():
            try:
                if connection is None:
                    connection = http.client.HTTPConnection(
                        "127.0.0.1", port, timeout=REQUEST_TIMEOUT
                    )
                connection.request("GET", "/")
                response = connection.getresponse()
                response.read()
                good = response.status == 200
                if response.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException):
                good = False
                if connection is not None:
                    connection.close()
                connection = None
            with lock:
                counts["ok" if good else "failed"] += 1
        if connection is not None:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(CLIENT_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=time_cap + REQUEST_TIMEOUT)
    return counts["ok"], counts["failed"]


def measure(
    mode: str, redis_server: RedisServer, requests: int, time_cap: float
) -> Figure:
    port = free_port()
    env = dict(
        os.environ,
        LOOPSHARE_BENCH_MODE=mode,
        LOOPSHARE_BENCH_REDIS_URL=redis_server.url,
        PYTHONPATH=os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
        PYTHONWARNINGS="ignore",
    )
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            gunicorn_command(port), env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:

            def answers() -> bool:
                if process.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(
                        f"gunicorn ({mode}) exited:\n{log.read().decode()[-3000:]}"
                    )
                try:
                    connection = http.client.HTTPConnection(
                        "127.0.0.1", port, timeout=5
                    )
                    try:
                        connection.request("GET", "/health")
                        return connection.getresponse().status == 200
                    finally:
                        connection.close()
                except OSError:
                    return False

            wait_until(answers, START_TIMEOUT, f"gunicorn ({mode})")
            before = redis_server.connections_received()
            started = time.perf_counter()
            ok, failed = drive(port, requests, time_cap)
            seconds = time.perf_counter() - started
            opened = redis_server.connections_received() - before
            # Connections the app still holds while the server runs (bounded
            # wait for teardowns of the last requests).
            deadline = time.monotonic() + 2
            while (
                redis_server.connected_clients() > GUNICORN_THREADS
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            open_after = redis_server.connected_clients()
        finally:
            stop(process)
        log.seek(0)
        tracebacks = log.read().decode(errors="replace").count("Traceback")
    return Figure(
        mode, ok + failed, ok, failed, opened, open_after, seconds, tracebacks
    )


def table(figures: list[Figure]) -> str:
    lines = [
        "| mode | requests | ok | failed | Redis connections opened | per request "
        "| open at the end | s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for f in figures:
        lines.append(
            f"| {f.mode} | {f.requests} | {f.ok} | {f.failed} | "
            f"{f.connections_opened} | {f.per_request:.3f} | "
            f"{f.connections_open_after} | {f.seconds:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument(
        "--time-cap", type=float, default=300.0, help="seconds per mode, at most"
    )
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes: {sorted(unknown)}")
    missing = []
    for module in ("flask", "redis", "gunicorn", "asgiref"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        print(
            f"missing {missing}: pip install 'flask[async]' 'redis>=5' gunicorn "
            f"-e {REPO}",
            file=sys.stderr,
        )
        return 2
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if binary is None:
        print("needs redis-server (apt-get install -y redis-server)", file=sys.stderr)
        return 2

    from importlib.metadata import version

    redis_server = RedisServer(binary)
    figures: list[Figure] = []
    try:
        for mode in modes:
            figure = measure(mode, redis_server, args.requests, args.time_cap)
            figures.append(figure)
            print(
                f"{mode:>7}: {figure.connections_opened} connections over "
                f"{figure.requests} requests ({figure.ok} ok, {figure.failed} failed)",
                flush=True,
            )
    finally:
        redis_server.stop()
    versions = (
        f"Python {sys.version.split()[0]}, Flask {version('flask')}, "
        f"redis-py {version('redis')}, gunicorn {version('gunicorn')} "
        f"(gthread, 1 worker, {GUNICORN_THREADS} threads), "
        f"{CLIENT_THREADS} keep-alive client threads"
    )
    print()
    print(versions)
    print(table(figures))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"versions": versions, "figures": [asdict(f) for f in figures]},
                indent=2,
            )
        )
    return 0 if all(f.failed == 0 for f in figures if f.mode != "stock") else 1


if __name__ == "__main__":
    sys.exit(main())
