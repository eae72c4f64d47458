"""Scenario 6: through a real server, gunicorn gthread, stock vs the adapter.

Both servers (1 worker, 4 threads, 127.0.0.1) run side by side pinned to the
worker CPU; a Python load client on the other CPU sends them alternate,
bounded batches (a fixed number of requests, a time cap) of a mix of sync and
async views over keep-alive connections.
"""

from __future__ import annotations

import contextlib
import http.client
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from loopbench import harness
from loopbench.harness import Config
from loopbench.report import Goal, Section, Table, kib, times

#: The request mix, cycled: plain sync, async view, sync view with 10 async calls.
MIX = ["/sync/", "/sync/", "/async/", "/fanout/?k=10"]
CLIENT_THREADS = 8
SERVER_THREADS = 4


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    sent: int = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


def drive(port: int, total: int, cap: float) -> Load:
    """Send *total* requests from `CLIENT_THREADS` threads, stop at *cap* seconds."""
    load = Load()
    lock = threading.Lock()
    counter = iter(range(total))
    deadline = time.monotonic() + cap

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            while time.monotonic() < deadline:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                path = MIX[index % len(MIX)]
                t0 = time.perf_counter()
                try:
                    conn.request("GET", path)
                    response = conn.getresponse()
                    response.read()
                    ok = response.status == 200
                    kind = f"HTTP {response.status}"
                except (OSError, http.client.HTTPException) as exc:
                    ok, kind = False, type(exc).__name__
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                elapsed = time.perf_counter() - t0
                with lock:
                    load.sent += 1
                    if ok:
                        load.latencies.append(elapsed)
                    else:
                        load.error(kind)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(CLIENT_THREADS)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(cap + 15)
    load.elapsed = time.perf_counter() - t0
    return load


def _gunicorn_argv(port: int) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "benchapp.wsgi:application",
        "--worker-class",
        "gthread",
        "--workers",
        "1",
        "--threads",
        str(SERVER_THREADS),
        "--bind",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        "--keep-alive",
        "5",
    ]
    help_text = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--help"], capture_output=True, text=True
    ).stdout
    # gunicorn >= 25.1 opens a control socket in $HOME by default.
    for flag in ("--control-socket-disable", "--no-control-socket"):
        if flag in help_text:
            argv.append(flag)
            break
    return argv


def _threads_of(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


@contextlib.contextmanager
def _server(config: Config, handler: str) -> Iterator[dict[str, Any]]:
    port = harness.free_port()
    env = harness.worker_env({"BENCH_PROFILE": "mixed", "BENCH_HANDLER": handler})
    with harness.server_process(
        _gunicorn_argv(port),
        port,
        cpu=config.worker_cpu,
        log=config.raw_dir / f"gunicorn-{handler}.log",
        env=env,
    ) as proc:
        deadline = time.monotonic() + 15
        while not harness.children_of(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = harness.children_of(proc.pid)
        if not workers:
            raise RuntimeError(f"gunicorn ({handler}) started no worker")
        yield {"port": port, "worker": workers[0]}


def run(config: Config) -> list[Section]:
    section = Section(
        "6",
        "Through a real server: gunicorn gthread, mixed sync and async views",
        f"gunicorn {SERVER_THREADS} threads x 1 worker on 127.0.0.1 (pinned to one "
        f"CPU), Django profile `mixed`; {CLIENT_THREADS} keep-alive client threads "
        f"on the other CPU cycle through {', '.join(MIX)}. Both servers run side by "
        "side and get alternate batches of a fixed number of requests (time-capped). "
        "req/s = requests / batch wall time, median of batches; latencies pooled.",
    )
    total = config.scaled(1200, 40)
    cap = config.scaled(30, 5)
    rounds = config.scaled(4, 1)
    handlers = ("stock", "loopshare")
    loads: dict[str, list[Load]] = {h: [] for h in handlers}
    memory: dict[str, dict[str, Any]] = {}
    with _server(config, "stock") as stock, _server(config, "loopshare") as ours:
        servers = {"stock": stock, "loopshare": ours}
        for handler, server in servers.items():
            drive(server["port"], config.scaled(200, 8), cap)  # warm-up
            memory[handler] = {"before": harness.proc_memory(server["worker"])}
        for round_no in range(rounds):
            order = handlers if round_no % 2 == 0 else handlers[::-1]
            for handler in order:
                loads[handler].append(drive(servers[handler]["port"], total, cap))
        for handler, server in servers.items():
            memory[handler]["after"] = harness.proc_memory(server["worker"])
            memory[handler]["threads"] = _threads_of(server["worker"])
    table = Table(
        "",
        [
            "server",
            "req/s",
            "p50 ms",
            "p99 ms",
            "requests ok / sent",
            "errors",
            "RSS before → after (peak)",
            "worker threads after",
        ],
    )
    rps: dict[str, float] = {}
    for handler in handlers:
        runs = loads[handler]
        rps[handler] = statistics.median(len(r.latencies) / r.elapsed for r in runs)
        latencies = sorted(v for r in runs for v in r.latencies)
        errors: dict[str, int] = {}
        for r in runs:
            for kind, count in r.errors.items():
                errors[kind] = errors.get(kind, 0) + count
        mem = memory[handler]
        table.rows.append(
            [
                "stock" if handler == "stock" else "adapter",
                f"{rps[handler]:,.0f}",
                _pct_ms(latencies, 50),
                _pct_ms(latencies, 99),
                f"{len(latencies)} / {sum(r.sent for r in runs)}",
                "; ".join(f"{k} x{v}" for k, v in errors.items()) or "none",
                f"{kib(mem['before']['rss_kib'])} → {kib(mem['after']['rss_kib'])} "
                f"({kib(mem['after']['peak_rss_kib'])})",
                str(mem["threads"]),
            ]
        )
        if handler == "loopshare" and errors:
            section.error = f"adapter requests failed: {errors}"
    section.tables.append(table)
    section.goals.append(
        Goal(
            "gunicorn gthread, mixed views",
            "adapter ≥ stock req/s, no errors (no numeric goal set)",
            f"{times(rps['loopshare'] / rps['stock'])} req/s "
            f"({rps['loopshare']:,.0f} vs {rps['stock']:,.0f})",
            rps["loopshare"] >= rps["stock"] and section.error is None,
        )
    )
    return [section]


def _pct_ms(sorted_values: list[float], q: float) -> str:
    if not sorted_values:
        return "n/a"
    index = min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1)))
    return f"{sorted_values[index] * 1e3:.2f}"
