"""Scenario 5: a real loop-bound client, ``redis.asyncio``, against a real redis-server.

The views use one module-level ``redis.asyncio.Redis`` and an async
``request_finished`` receiver closes its connections (what one does under
ASGI). Under stock every ``async_to_sync`` call gets a fresh loop, so the
module-level client meets connections made on a loop that is gone; the errors
are counted, not hidden. Connections opened per request come from the server's
``INFO stats`` ``total_connections_received``, read before and after each batch.
"""

from __future__ import annotations

import shutil
from typing import Any

from loopbench import harness
from loopbench.harness import Config, Pool
from loopbench.report import Goal, Section, Table, bar_plot, memory_table, times, us
from loopbench.scenarios.django_inproc import HANDLERS, django_mode

#: (label, path) of the cases; K GETs per request.
CASES = [
    ("sync view, K=1 async_to_sync GETs", "/redis/sync/?k=1"),
    ("sync view, K=10 async_to_sync GETs", "/redis/sync/?k=10"),
    ("async view, K=1 awaited GETs", "/redis/async/?k=1"),
    ("async view, K=10 awaited GETs", "/redis/async/?k=10"),
]


class RedisInfo:
    """Reads ``total_connections_received`` over one persistent connection."""

    def __init__(self, port: int) -> None:
        import redis

        self.client = redis.Redis(host="127.0.0.1", port=port)
        self.client.set("bench:key", b"x" * 100)
        self.base = self.total()

    def total(self) -> float:
        return float(self.client.info("stats")["total_connections_received"])

    def close(self) -> None:
        self.client.close()


def _diff_errors(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def run(config: Config) -> list[Section]:
    section = Section(
        "5",
        "A real loop-bound client: redis.asyncio GETs through a module-level client",
        "In-process Django requests (profile `redis`), redis-server on 127.0.0.1 "
        "(pinned to the other CPU). req/s = 1 / wall time per request (one request "
        "at a time); p50/p99 of the per-request wall time; *conns / request* = new "
        "server connections per request. Errors are caught in the view (HTTP 500) "
        "and in the receiver, and counted by kind.",
    )
    server = config.redis_server or shutil.which("redis-server")
    if not server:
        section.error = "redis-server not found (run as root to let run.py install it)"
        return [section]
    port = harness.free_port()
    argv = [
        server,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "yes",
        "--daemonize",
        "no",
    ]
    env = {"BENCH_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    modes = [django_mode("redis", h, CASES[0][1], latencies=True) for h in HANDLERS]
    modes = [
        harness.Mode(m.name, m.factory, m.params, {**(m.env or {}), **env})
        for m in modes
    ]
    results: dict[str, dict[str, Any]] = {}
    with (
        harness.server_process(
            argv, port, cpu=config.other_cpu, log=config.raw_dir / "redis-server.log"
        ),
        Pool(config, modes) as pool,
    ):
        info = RedisInfo(port)
        try:
            for label, path in CASES:
                before = pool.memory()
                measured = pool.interleave(
                    path,
                    units=config.scaled(40, 3),
                    rounds=config.scaled(10, 2),
                    counter=info.total,
                )
                after = pool.memory()
                harness.record(config, f"redis {label}", measured)
                results[label] = {
                    "measured": measured,
                    "requests": {
                        m: after[m]["n_requests"] - before[m]["n_requests"]
                        for m in measured
                    },
                    "failures": {
                        m: after[m]["n_failures"] - before[m]["n_failures"]
                        for m in measured
                    },
                    "errors": {
                        m: _diff_errors(
                            after[m].get("info_errors", {}),
                            before[m].get("info_errors", {}),
                        )
                        for m in measured
                    },
                }
            mem = pool.memory()
        finally:
            info.close()
    table = Table(
        "",
        [
            "case",
            "handler",
            "req/s",
            "p50 ms",
            "p99 ms",
            "CPU µs / request",
            "conns / request",
            "failed requests",
            "errors (by kind)",
        ],
    )
    rps: dict[str, list[float]] = {h: [] for h in HANDLERS}
    for label, data in results.items():
        for handler in HANDLERS:
            name = f"redis/{handler}"
            m = data["measured"][name]
            conns = sum(m.deltas) / len(m.deltas) if m.deltas else float("nan")
            errors = data["errors"][name]
            rps[handler].append(1e6 / m.wall_us)
            table.rows.append(
                [
                    label,
                    "stock" if handler == "stock" else "adapter",
                    f"{1e6 / m.wall_us:,.0f}",
                    f"{m.percentile(50) * 1e3:.2f}",
                    f"{m.percentile(99) * 1e3:.2f}",
                    us(m.cpu_us),
                    f"{conns:.2f}",
                    f"{data['failures'][name]} / {data['requests'][name]}",
                    "; ".join(f"{k} x{v}" for k, v in errors.items()) or "none",
                ]
            )
    section.tables += [table, memory_table(mem, [m.name for m in modes], {})]
    section.plots.append(
        bar_plot(
            config.out_dir / "redis_req_per_s.png",
            "redis.asyncio GETs from Django views (in-process, one at a time)",
            "requests / s (higher is better)",
            [label.replace(", ", "\n") for label, _ in CASES],
            {"stock": rps["stock"], "adapter": rps["loopshare"]},
        )
    )
    k10 = results[CASES[1][0]]
    stock, ours = k10["measured"]["redis/stock"], k10["measured"]["redis/loopshare"]
    conns = sum(ours.deltas) / len(ours.deltas) if ours.deltas else float("nan")
    speedup = stock.wall_us / ours.wall_us
    section.goals.append(
        Goal(
            "redis K=10 (sync view)",
            "≥ 2x req/s of stock, 1 connection / request",
            f"{times(speedup)} req/s ({1e6 / ours.wall_us:,.0f} vs "
            f"{1e6 / stock.wall_us:,.0f}), {conns:.2f} conns / request, "
            f"{k10['failures']['redis/loopshare']} failed (stock "
            f"{k10['failures']['redis/stock']})",
            speedup >= 2 and abs(conns - 1) < 0.05,
        )
    )
    ours_failed = sum(d["failures"]["redis/loopshare"] for d in results.values())
    ours_errors = [d["errors"]["redis/loopshare"] for d in results.values()]
    if ours_failed or any(ours_errors):
        section.error = f"adapter requests failed: {ours_errors}"
    return [section]
