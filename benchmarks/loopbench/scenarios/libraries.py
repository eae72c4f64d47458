"""Scenario 6b: real client libraries through gunicorn gthread, stock vs the adapter.

Issue 21, point 3: the projects of the acceptance tests
(``tests/django/test_real_clients.py`` and ``tests/django/test_channels_redis.py``),
served the same way and timed side by side. ``tests/django_project/
clients_example`` (a sync middleware and an async view sending values through
one client per event loop, closed by an async ``request_finished`` receiver)
with psycopg_pool and asyncpg on PostgreSQL, redis.asyncio on redis-server,
httpx and aiohttp against a local HTTP server; ``tests/django_project/
channels_example`` (one channels_redis round trip per request) on the core
layer from a sync and an async view, and on the pub/sub layer from an async
view. The servers come from ``tests/django/servers.py`` (imported, not copied):
``PostgresServer``, ``RedisServer`` and ``server_command``.

Per case, a stock gunicorn and an adapter gunicorn (gthread, 1 worker x 4
threads, 127.0.0.1, both pinned to the worker CPU) start fresh and side by
side: stock Django leaves every client it opens connected (one loop per
``async_to_sync`` call; see the tests), so a server that served other cases
would carry their connections. Then the sides take turns in rounds (stock
first in even rounds, the adapter first in odd ones), each a bounded batch: 4
client threads (on the other CPU, with the backends) x 10 requests over
keep-alive connections. A request counts if it answers 200 with the expected
body; anything else, or no answer in 10 s, is an error.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.util import find_spec
from typing import Any

from loopbench import harness
from loopbench.harness import Config
from loopbench.report import Goal, Section, Table, times

if str(harness.REPO) not in sys.path:
    sys.path.insert(0, str(harness.REPO))

# The repository on sys.path (above): the tests' server helpers.
from tests.django import servers

SERVER_THREADS = 4
REQUEST_TIMEOUT = 10.0
#: Every request's ratio target (adapter median / stock median).
TARGET = 1.10
#: Stock keeps every connection it opens until its server stops: PostgreSQL
#: must hold two per request of a case.
MAX_ROUNDS = 10
CLIENT_KINDS = ("psycopg_pool", "asyncpg", "redis", "httpx", "aiohttp")
POSTGRES_KINDS = ("psycopg_pool", "asyncpg")
PROJECTS = {
    "clients": "clients_example.wsgi:application",
    "channels": "channels_example.wsgi:application",
}
#: What each project imports beyond Django (for a clear skip without them).
MODULES = {
    "psycopg_pool": ("psycopg", "psycopg_pool"),
    "asyncpg": ("asyncpg",),
    "redis": ("redis",),
    "httpx": ("httpx",),
    "aiohttp": ("aiohttp",),
    "channels": ("channels", "channels_redis"),
}


@dataclass(frozen=True)
class Case:
    name: str
    project: str  # a key of PROJECTS
    #: The client kinds its requests cycle through (clients_example), or the
    #: channel layer alias and view (channels_example).
    kinds: tuple[str, ...] = ()
    layer: tuple[str, str] = ("", "")

    def request(self, number: int) -> tuple[str, bytes]:
        """The path of request *number* and the body it must answer."""
        if self.project == "clients":
            kind = self.kinds[number % len(self.kinds)]
            values = " ".join(map(str, range(number, number + 4)))
            return f"/use/{kind}/{number}/", f"{kind} {values}".encode()
        alias, view = self.layer
        return f"/{alias}/{view}/{number}/", f"{number} received {number}".encode()

    @property
    def needs_postgres(self) -> bool:
        return any(kind in POSTGRES_KINDS for kind in self.kinds)

    @property
    def modules(self) -> tuple[str, ...]:
        names = self.kinds if self.project == "clients" else ("channels",)
        return tuple(m for name in names for m in MODULES[name])


CASES = [
    *(Case(kind, "clients", (kind,)) for kind in CLIENT_KINDS),
    Case("mixed: the five above in turn", "clients", CLIENT_KINDS),
    Case("channels_redis core layer, sync view", "channels", layer=("default", "sync")),
    Case(
        "channels_redis core layer, async view", "channels", layer=("default", "async")
    ),
    Case(
        "channels_redis pub/sub layer, async view",
        "channels",
        layer=("pubsub", "async"),
    ),
]
#: Goal rows: (case name, goal name) — issue 21's targets.
GOALS = [
    ("psycopg_pool", "psycopg_pool request (clients_example)"),
    ("channels_redis pub/sub layer, async view", "pub/sub round trip, async view"),
    ("mixed: the five above in turn", "mixed libraries (clients_example)"),
]
SIDES = ("stock", "adapter")


# ------------------------------------------------------------------- backends


class Backends:
    """redis-server, PostgreSQL (when its binaries are here) and the echo
    server, all on 127.0.0.1 and on the orchestrator's CPU (they inherit its
    affinity); stopped by `close`, also when one of them fails to start."""

    def __init__(self, max_connections: int, postgres: bool) -> None:
        self.redis: Any = None
        self.postgres: Any = None
        self.echo: subprocess.Popen[str] | None = None
        self.echo_url = ""
        try:
            # initdb takes seconds: start PostgreSQL while the rest starts.
            failed: list[BaseException] = []

            def start_postgres() -> None:
                try:
                    self.postgres = servers.PostgresServer(max_connections)
                    for kind in POSTGRES_KINDS:
                        self.postgres.create_database(f"bench_{kind}")
                except BaseException as exc:
                    failed.append(exc)

            starter = threading.Thread(target=start_postgres, daemon=True)
            if postgres:
                starter.start()
            self.redis = servers.RedisServer()
            self.echo = subprocess.Popen(
                [sys.executable, "-m", "loopbench.echo_server"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=str(harness.BENCH_DIR),
                env=harness.worker_env(),
            )
            assert self.echo.stdout is not None
            self.echo_url = f"http://127.0.0.1:{int(self.echo.stdout.readline())}"
            if postgres:
                starter.join(servers.START_TIMEOUT * 2)
                if failed:
                    raise failed[0]
                if self.postgres is None:
                    raise TimeoutError("PostgreSQL did not start")
        except BaseException:
            self.close()
            raise

    def versions(self) -> str:
        """The servers' and the libraries' versions, for the report."""
        from importlib.metadata import PackageNotFoundError, version

        found = [f"redis-server {self.redis.admin.info('server')['redis_version']}"]
        if self.postgres is not None:
            row = self.postgres.admin.execute("SHOW server_version").fetchone()
            found.append(f"PostgreSQL {row[0].split()[0]}")
        for dist in (
            *("psycopg", "psycopg-pool", "asyncpg", "redis", "httpx", "aiohttp"),
            *("channels", "channels-redis", "gunicorn"),
        ):
            with contextlib.suppress(PackageNotFoundError):
                found.append(f"{dist} {version(dist)}")
        return ", ".join(found)

    def env(self, project: str) -> dict[str, str]:
        if project == "channels":
            return {"REDIS_URL": self.redis.url}
        env = {
            "LOOPSHARE_REDIS_URL": self.redis.url,
            "LOOPSHARE_HTTP_URL": self.echo_url,
        }
        if self.postgres is not None:
            port = self.postgres.port
            env["LOOPSHARE_PSYCOPG_DSN"] = self.postgres.dsn("bench_psycopg_pool")
            env["LOOPSHARE_ASYNCPG_DSN"] = (
                f"postgresql://postgres@127.0.0.1:{port}/bench_asyncpg"
            )
        return env

    def close(self) -> None:
        if self.echo is not None:
            with contextlib.suppress(OSError, ValueError):
                assert self.echo.stdin is not None
                self.echo.stdin.close()
            try:
                self.echo.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.echo.kill()
                self.echo.wait(timeout=5)
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.stop()


@contextlib.contextmanager
def _gunicorn(
    config: Config, backends: Backends, project: str, side: str
) -> Iterator[int]:
    """*project* behind gunicorn gthread, pinned to the worker CPU; its port."""
    port = harness.free_port()
    env = harness.worker_env(
        {
            **backends.env(project),
            "DJANGO_SETTINGS_MODULE": f"{project}_example.settings",
            "LOOPSHARE_ADAPTER": "1" if side == "adapter" else "0",
            # Bounded stop, as in the tests.
            "GUNICORN_CMD_ARGS": "--graceful-timeout 3",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env["PYTHONPATH"] = os.pathsep.join([str(servers.PROJECT_DIR), env["PYTHONPATH"]])
    argv = servers.server_command("gunicorn", port, PROJECTS[project], SERVER_THREADS)
    with harness.server_process(
        argv,
        port,
        cpu=config.worker_cpu,
        log=config.raw_dir / f"libraries-{project}-{side}.log",
        env=env,
    ):
        yield port


# ---------------------------------------------------------------------- load


@dataclass
class Batch:
    """One side's requests of one round."""

    latencies: list[float] = field(default_factory=list)  # ms, answered requests
    sent: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)

    def error(self, kind: str, sample: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.samples) < 3:
            self.samples.append(sample)


_numbers = itertools.count(1)


def drive(port: int, case: Case, clients: int, per_client: int, cap: float) -> Batch:
    """*clients* threads, each sending *per_client* requests over one keep-alive
    connection of its own; no request starts after *cap* seconds."""
    batch = Batch()
    lock = threading.Lock()
    deadline = time.monotonic() + cap

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
        try:
            for _ in range(per_client):
                if time.monotonic() > deadline:
                    return
                with lock:
                    number = next(_numbers)
                path, expected = case.request(number)
                started = time.perf_counter()
                try:
                    conn.request("GET", path)
                    response = conn.getresponse()
                    body = response.read()
                    status = response.status
                    kind = "" if (status, body) == (200, expected) else f"HTTP {status}"
                    sample = f"{path}: {status} {body[:160]!r}"
                except (OSError, http.client.HTTPException) as exc:
                    kind = type(exc).__name__
                    sample = f"{path}: {exc!r}"
                    conn.close()
                    conn = http.client.HTTPConnection(
                        "127.0.0.1", port, timeout=REQUEST_TIMEOUT
                    )
                elapsed = (time.perf_counter() - started) * 1e3
                with lock:
                    batch.sent += 1
                    if kind:
                        batch.error(kind, sample)
                    else:
                        batch.latencies.append(elapsed)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(cap + REQUEST_TIMEOUT + 5)
    return batch


# ------------------------------------------------------------------ figures


def _pct(values: list[float], q: float) -> float:
    data = sorted(values)
    if not data:
        return float("nan")
    return data[min(len(data) - 1, max(0, round(q / 100 * (len(data) - 1))))]


def ratio_ci(stock: list[Batch], adapter: list[Batch]) -> tuple[float, float, float]:
    """Adapter median / stock median (requests pooled over the rounds), and a
    ~95 % interval: a bootstrap over the rounds (a round's two batches ran back
    to back, so a resample takes both, with all their requests); 2.5th and
    97.5th percentiles of 2,000 resamples, from a fixed generator."""
    nan = float("nan")
    pooled_s = [v for b in stock for v in b.latencies]
    pooled_a = [v for b in adapter for v in b.latencies]
    if not pooled_s or not pooled_a:
        return nan, nan, nan
    point = statistics.median(pooled_a) / statistics.median(pooled_s)
    rounds = len(stock)
    rng = random.Random(20261127)
    ratios = []
    for _ in range(2000):
        picked = [rng.randrange(rounds) for _ in range(rounds)]
        s = [v for r in picked for v in stock[r].latencies]
        a = [v for r in picked for v in adapter[r].latencies]
        if s and a:
            ratios.append(statistics.median(a) / statistics.median(s))
    ratios.sort()
    if not ratios:
        return point, nan, nan
    return point, ratios[int(0.025 * len(ratios))], ratios[int(0.975 * len(ratios)) - 1]


@dataclass
class Result:
    case: Case
    batches: dict[str, list[Batch]]
    skipped: str = ""

    def pooled(self, side: str) -> list[float]:
        return [v for b in self.batches[side] for v in b.latencies]

    def errors(self, side: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for batch in self.batches[side]:
            for kind, count in batch.errors.items():
                out[kind] = out.get(kind, 0) + count
        return out

    def samples(self, side: str) -> list[str]:
        return [s for b in self.batches[side] for s in b.samples][:2]


def _errors_cell(errors: dict[str, int]) -> str:
    return "; ".join(f"{k} x{v}" for k, v in errors.items()) or "0"


# ---------------------------------------------------------------------- run


def _missing(case: Case, postgres: str | None) -> str:
    """Why *case* cannot run here, or ""."""
    absent = [m for m in case.modules if find_spec(m) is None]
    if absent:
        return f"Python packages missing: {', '.join(absent)}"
    if case.needs_postgres and postgres:
        return postgres
    return ""


def run(config: Config) -> list[Section]:
    asked = config.rounds if config.rounds_given else config.scaled(4, 2)
    # Stock leaves two PostgreSQL connections per request open until its
    # gunicorn stops (per case): bound the rounds that PostgreSQL must hold.
    rounds = max(1, min(asked, MAX_ROUNDS))
    # Fresh servers for every case; a smoke run (a handful of requests per
    # case) keeps one pair per project, whose server start-ups dominate it.
    fresh = not config.smoke
    clients = SERVER_THREADS
    per_client = config.scaled(10, 1)
    warmup = config.scaled(2, 1)
    cap = config.scaled(60, 15)
    section = Section(
        "6b",
        "Real client libraries through gunicorn gthread: ms per request, stock vs "
        "the adapter",
        "The projects of `tests/django/test_real_clients.py` (`clients_example`: a "
        "sync middleware makes one `async_to_sync` call, the async view three "
        "awaited calls, through one client per event loop; an async "
        "`request_finished` receiver closes the loop's clients) and "
        "`tests/django/test_channels_redis.py` (`channels_example`: new_channel, "
        "group_add, group_send, receive, group_discard per request; the core "
        "layer's receive() under a process-wide lock, as the project explains), "
        f"{'each case' if fresh else 'each project'} on a fresh stock gunicorn "
        "and a fresh adapter gunicorn (gthread, "
        f"1 worker x {SERVER_THREADS} threads, 127.0.0.1, pinned to the worker "
        "CPU; stock leaves the connections of every loop open, so "
        f"{'no case inherits' if fresh else 'in a full run no case inherits'} "
        "another's). The two take turns in "
        f"{rounds} rounds (order alternating"
        f"{f'; --rounds {asked} capped at {MAX_ROUNDS}' if asked > rounds else ''}"
        f"), each side's batch {clients} "
        f"keep-alive client threads x {per_client} requests, after "
        f"{clients} x {warmup} warm-up requests; clients, redis-server, "
        "PostgreSQL and the HTTP echo server run on the other CPU, all on "
        "loopback. ms = each answered request's time at the client; median and "
        "p90 pool the rounds. Ratio = adapter median / stock median, with a 95 % "
        "interval bootstrapped over the rounds; a goal is met when the whole "
        "interval is within its target, missed when none of it is. An error is "
        f"a reply other than 200 with the expected body, or none in "
        f"{REQUEST_TIMEOUT:.0f} s.",
    )
    if servers.redis_server_binary() is None:
        section.findings.append(
            "Skipped: no redis-server here (Debian package redis-server; "
            "`benchmarks/run.py` installs it with apt when run as root)."
        )
        for _, goal in GOALS:
            section.goals.append(
                Goal(goal, _target(), "not measured (no redis-server)", None)
            )
        return [section]
    postgres_missing = servers.postgres_missing()
    if postgres_missing:
        section.findings.append(
            f"The PostgreSQL cases were skipped: {postgres_missing} "
            "(`benchmarks/run.py` installs it with apt when run as root)."
        )
        postgres_missing = f"PostgreSQL missing: {postgres_missing}"
    runnable = {case.name: _missing(case, postgres_missing) for case in CASES}
    wants_postgres = any(
        case.needs_postgres and not runnable[case.name] for case in CASES
    )
    requests_per_side = clients * (warmup + rounds * per_client)
    held = requests_per_side * (1 if fresh else len(CASES))
    results: list[Result] = []
    t0 = time.monotonic()
    backends = Backends(2 * held + 50, wants_postgres)
    _log(f"backends: {time.monotonic() - t0:.1f}s")
    try:
        section.intro += f" Versions: {backends.versions()}."
        with contextlib.ExitStack() as stack:
            serving: tuple[str, dict[str, int]] = ("", {})
            for case in CASES:
                result = Result(case, {side: [] for side in SIDES}, runnable[case.name])
                results.append(result)
                if result.skipped:
                    continue
                t0 = time.monotonic()
                key = case.name if fresh else case.project
                if serving[0] != key:
                    stack.close()
                    serving = (
                        key,
                        {
                            side: stack.enter_context(
                                _gunicorn(config, backends, case.project, side)
                            )
                            for side in SIDES
                        },
                    )
                ports = serving[1]
                for side in SIDES:
                    # The first request also waits for the worker to boot.
                    drive(ports[side], case, clients, warmup, cap)
                for round_no in range(rounds):
                    order = SIDES if round_no % 2 == 0 else SIDES[::-1]
                    for side in order:
                        result.batches[side].append(
                            drive(ports[side], case, clients, per_client, cap)
                        )
                _log(f"{case.name}: {time.monotonic() - t0:.1f}s")
    finally:
        backends.close()
    _report(section, results)
    return [section]


def _log(message: str) -> None:
    print(f"[bench]   {message}", file=sys.stderr, flush=True)


def _target() -> str:
    return f"adapter / stock median ms per request ≤ {TARGET:.2f}, no errors"


def _report(section: Section, results: list[Result]) -> None:
    table = Table(
        "",
        [
            "case",
            "stock p50 ms",
            "adapter p50 ms",
            "stock p90 ms",
            "adapter p90 ms",
            "ratio (95 % CI)",
            "ok / sent (stock, adapter)",
            "errors (stock, adapter)",
        ],
    )
    judged: dict[str, tuple[bool | None, str]] = {}
    adapter_failures: list[str] = []
    for result in results:
        case = result.case
        if result.skipped:
            table.rows.append([case.name, *["—"] * 6, f"skipped: {result.skipped}"])
            judged[case.name] = (None, f"not measured ({result.skipped})")
            continue
        stock, adapter = result.pooled("stock"), result.pooled("adapter")
        point, low, high = ratio_ci(result.batches["stock"], result.batches["adapter"])
        errors = {side: result.errors(side) for side in SIDES}
        sent = {side: sum(b.sent for b in result.batches[side]) for side in SIDES}
        table.rows.append(
            [
                case.name,
                f"{statistics.median(stock):.1f}" if stock else "n/a",
                f"{statistics.median(adapter):.1f}" if adapter else "n/a",
                f"{_pct(stock, 90):.1f}",
                f"{_pct(adapter, 90):.1f}",
                f"{times(point)} ({low:.2f}-{high:.2f})",
                f"{len(stock)}/{sent['stock']}, {len(adapter)}/{sent['adapter']}",
                f"{_errors_cell(errors['stock'])}, {_errors_cell(errors['adapter'])}",
            ]
        )
        for side in SIDES:
            for sample in result.samples(side):
                table.notes.append(f"- {case.name}, {side}: `{sample}`")
        if errors["adapter"]:
            adapter_failures.append(f"{case.name}: {errors['adapter']}")
        ok = harness.judged(low, high, lambda r: r <= TARGET)
        if errors["adapter"]:
            ok = False
        measured = (
            f"{times(point)} (95 % CI {low:.2f}-{high:.2f}); "
            f"{statistics.median(adapter) if adapter else float('nan'):.1f} vs "
            f"{statistics.median(stock) if stock else float('nan'):.1f} ms"
            + (f"; adapter errors {errors['adapter']}" if errors["adapter"] else "")
        )
        judged[case.name] = (ok, measured)
    section.tables.append(table)
    for case_name, goal_name in GOALS:
        met, measured = judged[case_name]
        section.goals.append(Goal(goal_name, _target(), measured, met))
    if adapter_failures:
        section.error = "adapter requests failed: " + "; ".join(adapter_failures)
