"""Issue #21: channels_redis 4.3 channel layers under WSGI, stock Django vs the adapter.

The example project ``tests/django_project/channels_example`` (Django 6.1,
channels, channels-redis) behind gunicorn gthread, 1 worker, with 1 and with 4
request threads. Each request makes one round trip through a channel layer —
``new_channel``, ``group_add``, ``group_send``, ``receive``, ``group_discard``
on a channel and a group of its own — on the core layer
(``RedisChannelLayer``) or the pub/sub layer (``RedisPubSubChannelLayer``),
from a sync view (one ``async_to_sync`` per step) or an async view. Every
view that receives on the core layer takes a process-wide ``threading.Lock``
around ``receive()``, as a WSGI application must: that layer lets one event
loop receive at a time (see ``channels_example/views.py``).

Each case runs against redis-server on loopback and again through a
``servers.DelayingProxy`` that hands over every chunk Redis sends 30 ms late,
so that a rule tuned to loopback timing cannot pass.

The tasks a call spawns matter here (DESIGN-NOTES §7): the core layer's
``receive()`` leaves a fire-and-forget cleaner (``_clean_receive_backup``, one
Redis round trip) holding a process-wide lock that the next ``receive()``, on
any thread, waits for; the pub/sub layer's reader task lives as long as the
loop. A call must wait for the first and must not wait for the second. When
a sync view's ``receive`` call returns with its cleaner still pending (seen
with ``asgiref_loopshare.configure(task_grace=0)``), four-thread round trips
hang and one-thread ones open a second Redis connection per request.

Measured with the adapter in ``INSTALLED_APPS`` and with stock Django: errors
(a response that is not ``200 <n> received <n>``), hangs (no answer within
``HANG_TIMEOUT``; that client sends nothing more, and what it had left to send
counts as errors), Redis connections opened per request and left open, and
the median ms per answered request. Stock Django cannot make the pub/sub round
trip from a sync view: each step runs in a loop of its own, and the layer
keeps its channels per loop ("You can only call group_add() on channels that
exist in-process"). The tests assert behaviour only; the timings are printed
in pytest's terminal summary.

Runs in the Django 6.1 cells of ``tests/run.py`` (which install channels and
channels-redis); skipped elsewhere.
"""

from __future__ import annotations

import re
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import django
import pytest

if django.VERSION[:2] < (6, 1):
    pytest.skip(
        f"the channels_redis tests run on Django 6.1 (this is {django.__version__})",
        allow_module_level=True,
    )
pytest.importorskip("channels", reason="needs channels (Django 6.1 cells)")
pytest.importorskip("channels_redis", reason="needs channels-redis (Django 6.1 cells)")

from servers import (
    DelayingProxy,
    ProjectServer,
    RedisServer,
    redis_server_binary,
    run_clients,
)

pytestmark = [
    pytest.mark.skipif(
        redis_server_binary() is None,
        reason="needs redis-server (Debian package redis-server)",
    ),
    pytest.mark.timeout(180),
]

APP = "channels_example.wsgi:application"
#: Every chunk from Redis reaches the server this much later through the proxy.
DELAY = 0.03
#: Requests per case: fewer through the proxy, where a round trip waits for
#: a dozen or more delayed replies. Multiples of 4 (one share per client).
REQUESTS = {"loopback": 40, "delayed": 8}
#: A request not answered within this long is a hang. A delayed round trip
#: takes under a second, even waiting for three others' receive().
HANG_TIMEOUT = 10.0
#: How long the last requests' loops may take to close their connections.
CLOSE_WAIT = 5.0
#: gunicorn waits this long for hung request threads when stopped.
GRACEFUL_TIMEOUT = 3
_EXCEPTION_LINE = re.compile(r"^(?:\w+\.)*\w*(?:Error|Exception): .*$", re.M)
CASES = [
    ("default", "sync"),
    ("default", "async"),
    ("pubsub", "sync"),
    ("pubsub", "async"),
]
CASE_IDS = [f"{'core' if a == 'default' else a}-{view}" for a, view in CASES]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def proxy(redis_server: RedisServer) -> Iterator[DelayingProxy]:
    with DelayingProxy(redis_server.port, delay=DELAY) as proxy:
        yield proxy


class Servers:
    """One server per (adapter, threads, network), started on first use and
    shared by the cases; a server that hung is replaced for the next case.

    A server is the example project behind gunicorn gthread (1 worker,
    *threads* threads), its channel layers on Redis through *network*; a
    request it does not answer within HANG_TIMEOUT raises ``TimeoutError``."""

    def __init__(self, redis_server: RedisServer, proxy: DelayingProxy) -> None:
        self.ports = {"loopback": redis_server.port, "delayed": proxy.port}
        self.started: dict[tuple[bool, int, str], ProjectServer] = {}

    def get(self, adapter: bool, threads: int, network: str) -> ProjectServer:
        key = (adapter, threads, network)
        if key not in self.started:
            mode = "adapter" if adapter else "stock"
            self.started[key] = ProjectServer(
                APP,
                "channels_example.settings",
                adapter=adapter,
                threads=threads,
                label=f"{network:<8} gunicorn --threads {threads} {mode:<7}",
                env={
                    "REDIS_URL": f"redis://127.0.0.1:{self.ports[network]}/0",
                    "GUNICORN_CMD_ARGS": f"--graceful-timeout {GRACEFUL_TIMEOUT}",
                },
                workdir_prefix="loopshare-channels-",
                request_timeout=HANG_TIMEOUT,
            )
        return self.started[key]

    def discard(self, adapter: bool, threads: int, network: str) -> None:
        self.started.pop((adapter, threads, network)).stop()

    def stop(self) -> None:
        while self.started:
            self.started.popitem()[1].stop()


@pytest.fixture(scope="module")
def servers(redis_server: RedisServer, proxy: DelayingProxy) -> Iterator[Servers]:
    servers = Servers(redis_server, proxy)
    try:
        yield servers
    finally:
        servers.stop()


@dataclass
class Figures:
    """What one case's requests did."""

    label: str
    requests: int
    errors: int
    hangs: int
    #: Milliseconds per correctly answered request, as its client measured.
    times: list[float]
    connections_opened: int
    left_open: int
    tracebacks: int
    seconds: float
    error_samples: list[str] = field(default_factory=list)
    #: The server log's exception lines, most frequent first, with their counts.
    exceptions: list[tuple[str, int]] = field(default_factory=list)

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.times) if self.times else None

    def line(self) -> str:
        median = self.median_ms
        return (
            f"{self.label:<62} errors={self.errors:>2}/{self.requests:<2} "
            f"hangs={self.hangs} "
            f"median={'-' if median is None else f'{median:.1f}':>6} ms/request "
            f"redis connections={self.connections_opened / self.requests:.2f}"
            f"/request left open={self.left_open} ({self.seconds:.1f}s)"
        )


def measure(
    redis_server: RedisServer,
    servers: Servers,
    adapter: bool,
    threads: int,
    network: str,
    alias: str,
    view: str,
) -> Figures:
    """REQUESTS[network] round trips: one after another with one server thread,
    from as many clients at once as there are server threads otherwise."""
    server = servers.get(adapter, threads, network)
    requests = REQUESTS[network]
    layer = "core" if alias == "default" else alias
    label = f"channels_redis {layer:<6} {view:<5} view {server.label}"
    opened_before = redis_server.connections_received()
    open_before = redis_server.connected_clients()
    log_before = len(server.log())
    errors: list[str] = []
    times: list[float] = []
    hangs = 0
    lock = threading.Lock()

    def client(numbers: range) -> None:
        nonlocal hangs
        for sent, number in enumerate(numbers):
            path = f"/{alias}/{view}/{number}/"
            expected = f"{number} received {number}".encode()
            started = time.monotonic()
            try:
                status, body = server.get(path)
            except (TimeoutError, socket.timeout):
                with lock:
                    hangs += 1
                    errors.append(f"{path}: no answer in {HANG_TIMEOUT}s")
                    left = len(numbers) - sent - 1
                    errors.extend(["not sent: its client saw a hang"] * left)
                return
            except OSError as exc:
                status, body = 0, repr(exc).encode()
            elapsed = (time.monotonic() - started) * 1000
            with lock:
                if (status, body) == (200, expected):
                    times.append(elapsed)
                else:
                    errors.append(f"{path}: {status} {body[:200]!r}")

    started = time.monotonic()
    run_clients(client, requests, threads, (HANG_TIMEOUT + 5) * requests)
    seconds = time.monotonic() - started

    def left_open() -> int:
        return max(redis_server.connected_clients() - open_before, 0)

    deadline = time.monotonic() + CLOSE_WAIT
    while left_open() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = server.log()[log_before:]
    figures = Figures(
        label=label,
        requests=requests,
        errors=len(errors),
        hangs=hangs,
        times=times,
        connections_opened=redis_server.connections_received() - opened_before,
        left_open=left_open(),
        tracebacks=log.count("Traceback (most recent call last)"),
        seconds=seconds,
        error_samples=errors[:3],
        exceptions=Counter(_EXCEPTION_LINE.findall(log)).most_common(3),
    )
    if hangs:
        servers.discard(adapter, threads, network)
    return figures


#: Redis connections a round trip opens with one loop per request: the core
#: layer keeps one pool per loop, and its steps (the receive cleaner included,
#: which finishes before the next step) run one after another; the pub/sub
#: layer keeps a subscriber connection and a publisher connection per loop.
ADAPTER_CONNECTIONS = {"default": 1, "pubsub": 2}


def round_trip_cases(test: Callable[..., None]) -> Callable[..., None]:
    """Parametrizes *test* over every case, 1 and 4 threads and both networks
    (ids such as ``core-sync-1-loopback``)."""
    test = pytest.mark.parametrize(("alias", "view"), CASES, ids=CASE_IDS)(test)
    test = pytest.mark.parametrize("threads", [1, 4])(test)
    return pytest.mark.parametrize("network", ["loopback", "delayed"])(test)


@pytest.fixture
def round_trips(
    redis_server: RedisServer,
    servers: Servers,
    network: str,
    threads: int,
    alias: str,
    view: str,
    figures: list[Figures],
) -> Callable[[bool], Figures]:
    """``round_trips(adapter)``: the figures of `measure` for this case, also
    shown in the terminal summary."""

    def measured(adapter: bool) -> Figures:
        result = measure(redis_server, servers, adapter, threads, network, alias, view)
        figures.append(result)
        return result

    return measured


@round_trip_cases
def test_adapter_round_trips(
    round_trips: Callable[[bool], Figures], alias: str
) -> None:
    result = round_trips(True)
    assert (result.errors, result.hangs) == (0, 0), (
        result.exceptions,
        result.error_samples,
    )
    assert result.tracebacks == 0
    assert result.connections_opened == ADAPTER_CONNECTIONS[alias] * result.requests
    assert result.left_open == 0


@round_trip_cases
def test_stock_round_trips(
    round_trips: Callable[[bool], Figures], alias: str, view: str
) -> None:
    result = round_trips(False)
    if (alias, view) == ("pubsub", "sync"):
        # Each step in a loop of its own: group_add cannot see new_channel's channel.
        assert (result.errors, result.hangs) == (result.requests, 0)
        assert result.exceptions[0][0].startswith(
            "RuntimeError: You can only call group_add() on channels that exist"
        )
        return
    # asyncio.run cancels the receive cleaner and runs it to its end before
    # the call returns, so the next receive(), on any thread, finds the lock free.
    assert (result.errors, result.hangs) == (0, 0), (
        result.exceptions,
        result.error_samples,
    )
    assert result.left_open == 0
    if (alias, view) == ("default", "sync"):
        # A pool per loop: one connection per step that talks to Redis (4; 3
        # when another thread's receive() had already buffered the message).
        assert result.connections_opened > 2 * result.requests
