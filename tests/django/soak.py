"""Soak: the example project (adapter on) behind a real server, under a bounded load.

`soak` starts gunicorn (gthread, 1 worker, 4 threads) or waitress (4 threads)
serving ``tests/django_project`` with its own redis-server (``servers.py``), drives
a fixed mix of requests from a fixed number of client threads over keep-alive
connections (``http.client``, 127.0.0.1 only), and reads the *server process*'s
figures (``/proc``; for gunicorn the worker) after a warm-up and at the end.

The project runs with its probes on, so every request goes through the async
``ProbeMiddleware`` and the async ``request_started`` / ``request_finished``
receivers; the mix adds the view kinds on top of that.

Figures are taken with no client connection open and the server settled (its
fd count stable), at start and at end, so the two are comparable.

``tests/django/test_soak.py`` is the short CI run; ``benchmarks/soak.py`` the
full one (10 000 requests per server) that prints a table.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from servers import REQUEST_TIMEOUT, DjangoServer, wait_until

SOAK_KINDS = ("gunicorn", "waitress")
#: Worker threads each server runs (``servers.server_command``).
SERVER_THREADS = 4
FILE_SIZE = 4 * 1024 * 1024  # loopshare_example.views.FILE_SIZE
STREAM_BODY = b"chunk-0\nchunk-1\nchunk-2\n"


def _json_with(key: str) -> Callable[[bytes], bool]:
    def check(body: bytes) -> bool:
        return key in json.loads(body)

    return check


#: (path, check of the body): one request of each per round.
MIX: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("/sync/", lambda body: body == b"sync"),
    ("/async/", _json_with("events")),
    ("/stream/sync/", lambda body: body == STREAM_BODY),
    ("/stream/async/", lambda body: body == STREAM_BODY),
    ("/file/", lambda body: len(body) == FILE_SIZE),
    ("/redis/per-loop/", _json_with("count")),
)
GC_PATH = "/debug/gc/"  # loopshare_example.urls: gc.collect(), len(gc.garbage)

METRICS = (
    "errors",
    "threads",
    "fds",
    "rss_kb",
    "redis_clients",
    "redis_connections_received",
    "gc_garbage",
)


@dataclass
class Snapshot:
    """The server process's figures at one moment."""

    pid: int
    threads: int
    fds: int
    rss_kb: int
    redis_clients: int
    redis_connections_received: int
    gc_garbage: int
    thread_names: list[str] = field(default_factory=list)  # Python's, by name
    errors: int = 0


@dataclass
class SoakResult:
    kind: str
    requests: int
    clients: int
    completed: int = 0
    errors: int = 0
    reconnects: int = 0
    timed_out: bool = False
    seconds: float = 0.0
    tracebacks: int = 0
    start: Snapshot | None = None
    middle: Snapshot | None = None  # after half the requests (``midpoint=True``)
    end: Snapshot | None = None
    error_samples: list[str] = field(default_factory=list)

    def delta(self, metric: str) -> int:
        assert self.start is not None
        assert self.end is not None
        return int(getattr(self.end, metric)) - int(getattr(self.start, metric))

    def rows(self) -> list[tuple[str, int, int | None, int, int]]:
        """(metric, start, middle or None, end, end - start)."""
        assert self.start is not None
        assert self.end is not None
        middle = self.middle
        return [
            (
                m,
                getattr(self.start, m),
                None if middle is None else getattr(middle, m),
                getattr(self.end, m),
                self.delta(m),
            )
            for m in METRICS
        ]

    def summary(self) -> str:
        assert self.start is not None
        assert self.end is not None
        lines = [
            f"{self.kind}: {self.completed}/{self.requests} requests from "
            f"{self.clients} clients in {self.seconds:.1f}s, errors={self.errors}, "
            f"keep-alive reconnects={self.reconnects}, "
            f"server tracebacks={self.tracebacks}, time cap hit={self.timed_out}",
            f"  {'metric':<28}{'start':>10}{'middle':>10}{'end':>10}{'delta':>10}",
        ]
        for metric, start, middle, end, delta in self.rows():
            mid = "-" if middle is None else str(middle)
            lines.append(f"  {metric:<28}{start:>10}{mid:>10}{end:>10}{delta:>+10}")
        if self.start.thread_names != self.end.thread_names:
            lines.append(f"  Python threads at start: {self.start.thread_names}")
        lines.append(f"  Python threads at end: {self.end.thread_names}")
        lines.extend(f"  error: {sample}" for sample in self.error_samples)
        return "\n".join(lines)


def server_pid(server: DjangoServer) -> int:
    """The pid serving requests: gunicorn's (only) worker, else the process."""
    pid = server.process.pid
    if server.kind != "gunicorn":
        return pid
    children: list[int] = []

    def has_worker() -> bool:
        path = Path(f"/proc/{pid}/task/{pid}/children")
        children[:] = [int(c) for c in path.read_text().split()]
        return len(children) == 1

    wait_until(has_worker, 30, "gunicorn's worker")
    return children[0]


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _settle(pid: int, server: DjangoServer, seconds: float = 5.0) -> None:
    """Wait (bounded) until the server's fds and Redis clients stop changing."""
    deadline = time.monotonic() + seconds
    previous = None
    while time.monotonic() < deadline:
        now = (_fds(pid), server.redis.connected_clients())
        if now == previous:
            return
        previous = now
        time.sleep(0.25)


def snapshot(server: DjangoServer, pid: int) -> Snapshot:
    status, body = server.get(GC_PATH)  # its own connection, closed after
    if status != 200:
        raise RuntimeError(f"{GC_PATH} answered {status}: {body[:200]!r}")
    debug = json.loads(body)
    garbage = int(debug["garbage"])
    _settle(pid, server)
    fields = _status(pid)
    return Snapshot(
        pid=pid,
        threads=int(fields["Threads"]),
        fds=_fds(pid),
        rss_kb=int(fields["VmRSS"].split()[0]),
        redis_clients=server.redis.connected_clients(),
        redis_connections_received=server.redis.connections_received(),
        gc_garbage=garbage,
        thread_names=list(debug["threads"]),
    )


class _Client:
    """One keep-alive connection, reopened when the server closed an idle one."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection: http.client.HTTPConnection | None = None
        self.served = 0  # requests answered on the current connection

    def get(self, path: str) -> tuple[int, bytes, bool]:
        """(status, body, reconnected)."""
        try:
            return (*self._get(path), False)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not self.served:
                raise
            # The server closed a kept-alive connection before answering (as
            # clients do, retry an idempotent GET once on a new connection).
            self.close()
            return (*self._get(path), True)

    def _get(self, path: str) -> tuple[int, bytes]:
        if self.connection is None:
            self.connection = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=REQUEST_TIMEOUT
            )
            self.served = 0
        try:
            self.connection.request("GET", path)
            response = self.connection.getresponse()
            body = response.read()
        except BaseException:
            self.close()
            raise
        self.served += 1
        if response.will_close:
            self.close()
        return response.status, body

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def _drive(
    server: DjangoServer,
    result: SoakResult,
    requests: int,
    clients: int,
    deadline: float,
    count_in_result: bool = True,
) -> None:
    """*requests* GETs over the mix from *clients* threads; stops at *deadline*."""
    lock = threading.Lock()
    issued = 0

    def take() -> int | None:
        nonlocal issued
        with lock:
            if issued >= requests:
                return None
            if time.monotonic() >= deadline:
                result.timed_out = True
                return None
            issued += 1
            return issued - 1

    def client() -> None:
        connection = _Client(server.port)
        try:
            while (index := take()) is not None:
                path, check = MIX[index % len(MIX)]
                problem = None
                reconnected = False
                try:
                    status, body, reconnected = connection.get(path)
                    if status != 200:
                        problem = f"{path}: status {status} {body[:200]!r}"
                    elif not check(body):
                        problem = f"{path}: unexpected body {body[:200]!r}"
                except Exception as error:
                    problem = f"{path}: {type(error).__name__}: {error}"
                if not count_in_result:
                    if problem:
                        raise RuntimeError(f"warm-up failed: {problem}")
                    continue
                with lock:
                    result.completed += 1
                    result.reconnects += reconnected
                    if problem:
                        result.errors += 1
                        if len(result.error_samples) < 5:
                            result.error_samples.append(problem)
        finally:
            connection.close()

    failures: list[BaseException] = []

    def run() -> None:
        try:
            client()
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=run, name=f"soak-{i}") for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        # Every request is bounded by REQUEST_TIMEOUT, so is the join.
        thread.join(timeout=max(deadline - time.monotonic(), 0) + REQUEST_TIMEOUT * 2)
        if thread.is_alive():
            raise TimeoutError(f"{thread.name} did not finish")
    if failures:
        raise failures[0]


def soak(
    server_kind: str,
    requests: int,
    threads: int,
    time_cap: float,
    warmup_rounds: int = 2,
    midpoint: bool = False,
) -> SoakResult:
    """Serve, warm up, snapshot, drive *requests* (within *time_cap* s), snapshot.

    *threads* is the number of client threads, each on its own keep-alive
    connection. With *midpoint*, figures are also taken after half the
    requests: growth in the second half, not only since the warm-up, is what
    would grow with the number of requests served. Everything started is
    stopped before returning.
    """
    if server_kind not in SOAK_KINDS:
        raise ValueError(f"server_kind must be one of {SOAK_KINDS}")
    result = SoakResult(kind=server_kind, requests=requests, clients=threads)
    server = DjangoServer(server_kind, adapter=True)
    try:
        pid = server_pid(server)
        # The file view creates its 4 MiB file on first use, racily (concurrent
        # first requests share one temporary file): create it before the load.
        status, body = server.get("/file/")
        if status != 200 or len(body) != FILE_SIZE:
            raise RuntimeError(f"/file/ answered {status}:\n{server.log()[-3000:]}")
        warmup = warmup_rounds * len(MIX) * threads
        try:
            _drive(server, result, warmup, threads, time.monotonic() + time_cap, False)
        except RuntimeError as error:
            raise RuntimeError(
                f"{error}\nserver log tail:\n{server.log()[-3000:]}"
            ) from error
        result.start = snapshot(server, pid)
        tracebacks = server.tracebacks()
        began = time.monotonic()
        first = requests // 2 if midpoint else requests
        _drive(server, result, first, threads, began + time_cap)
        if midpoint:
            result.middle = snapshot(server, server_pid(server))
            result.middle.errors = result.errors
            _drive(server, result, requests - first, threads, began + time_cap)
        result.seconds = time.monotonic() - began
        result.end = snapshot(server, server_pid(server))
        result.tracebacks = server.tracebacks() - tracebacks
        if result.tracebacks:
            result.error_samples.append(f"server log tail:\n{server.log()[-3000:]}")
        result.start.errors = 0
        result.end.errors = result.errors
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.label} exited:\n{server.log()[-3000:]}")
        return result
    finally:
        server.stop()


def table(results: list[SoakResult]) -> str:
    """A Markdown table: start / (middle) / end / delta per metric per server."""
    lines = [
        "| server | metric | start | middle | end | delta |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for result in results:
        for metric, start, middle, end, delta in result.rows():
            mid = "-" if middle is None else middle
            lines.append(
                f"| {result.kind} | {metric} | {start} | {mid} | {end} | {delta:+} |"
            )
    return "\n".join(lines)
