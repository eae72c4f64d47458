"""Scenario 5: a real loop-bound client, ``redis.asyncio``, against a real redis-server.

The views use one module-level ``redis.asyncio.Redis`` and an async
``request_finished`` receiver closes its connections (what one does under
ASGI). Under stock every ``async_to_sync`` call gets a fresh loop, so the
module-level client meets connections made on a loop that is gone; the errors
are counted, not hidden. Connections opened per request come from the server's
``INFO stats`` ``total_connections_received``, read before and after each batch.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any

from loopbench import harness
from loopbench.harness import Config, Measured, Pool
from loopbench.report import Goal, Section, Table, bar_plot, memory_table, times, us
from loopbench.scenarios.django_inproc import HANDLERS, django_mode

#: (label, path) of the cases; K GETs per request.
CASES = [
    ("sync view, K=1 async_to_sync GETs", "/redis/sync/?k=1"),
    ("sync view, K=10 async_to_sync GETs", "/redis/sync/?k=10"),
    ("sync view, K=10 GETs, a fresh client per call", "/redis/fresh/?k=10"),
    ("async view, K=1 awaited GETs", "/redis/async/?k=1"),
    ("async view, K=10 awaited GETs", "/redis/async/?k=10"),
]
PLOT_LABELS = dict(
    zip(
        [label for label, _ in CASES],
        [
            "sync view, K=1\nmodule client",
            "sync view, K=10\nmodule client",
            "sync view, K=10\nclient per call",
            "async view, K=1\nmodule client",
            "async view, K=10\nmodule client",
        ],
    )
)
#: The goal's case, and the pattern that works under stock to compare it with.
GOAL_CASE, STOCK_WORKING_CASE = CASES[1][0], CASES[2][0]


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
        "In-process Django requests (profile `redis`) from a server thread, "
        "redis-server on 127.0.0.1 (pinned to the other CPU). req/s = 1 / wall time "
        "per request (one request at a time), failed requests included; *ok req/s* "
        "counts only requests that answered 200. p50/p99 of the per-request wall "
        "time; *conns / request* = new server connections per request. Errors are "
        "caught in the view (HTTP 500) and in the receiver, and counted by kind. "
        "The *fresh client per call* case is what works under stock: a client made "
        "and closed inside each `async_to_sync` call.",
    )
    server = config.redis_server or shutil.which("redis-server")
    if not server:
        if os.geteuid() == 0:
            section.error = "redis-server missing although run.py may install it"
        else:
            section.intro += (
                " **Skipped:** no `redis-server` here; run as root and run.py "
                "installs it with apt."
            )
        return [section]
    port = harness.free_port()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no"]
    env = {"BENCH_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    modes = [
        dataclasses.replace(m, env={**(m.env or {}), **env})
        for m in (
            django_mode("redis", h, CASES[0][1], latencies=True) for h in HANDLERS
        )
    ]
    results: dict[str, Case] = {}
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
                    rounds=config.scaled(12, 2),
                    counter=info.total,
                )
                harness.record(config, f"redis {label}", measured)
                results[label] = Case.of(measured, before, pool.memory())
            mem = pool.memory()
        finally:
            info.close()
    table = Table(
        "",
        [
            "case",
            "handler",
            "req/s",
            "ok req/s",
            "p50 ms",
            "p99 ms",
            "CPU µs / request",
            "conns / request",
            "failed requests",
            "errors (by kind)",
        ],
    )
    ok_rps: dict[str, list[float]] = {h: [] for h in HANDLERS}
    for label, case in results.items():
        for handler in HANDLERS:
            m = case.measured[f"redis/{handler}"]
            ok_rps[handler].append(case.ok_rps(handler))
            table.rows.append(
                [
                    label,
                    "stock" if handler == "stock" else "adapter",
                    f"{1e6 / m.wall_us:,.0f}",
                    f"{case.ok_rps(handler):,.0f}",
                    f"{m.percentile(50) * 1e3:.2f}",
                    f"{m.percentile(99) * 1e3:.2f}",
                    us(m.cpu_us),
                    f"{case.conns(handler):.2f}",
                    f"{case.failures[handler]} / {case.requests[handler]}",
                    "; ".join(f"{k} x{v}" for k, v in case.errors[handler].items())
                    or "none",
                ]
            )
    section.tables += [table, memory_table(mem, [m.name for m in modes], {})]
    section.plots.append(
        bar_plot(
            config.out_dir / "redis_req_per_s.png",
            "redis.asyncio GETs from Django views (in-process; failed requests "
            "not counted)",
            "successful requests / s",
            [PLOT_LABELS[label] for label, _ in CASES],
            {"stock": ok_rps["stock"], "adapter": ok_rps["loopshare"]},
        )
    )
    ours, working = results[GOAL_CASE], results[STOCK_WORKING_CASE]
    speedup = ours.ok_rps("loopshare") / working.ok_rps("stock")
    conns = ours.conns("loopshare")
    section.goals.append(
        Goal(
            "redis K=10 (sync view)",
            "≥ 2x req/s of stock, 1 connection / request",
            f"{times(speedup)} ok req/s of stock's working pattern "
            f"({ours.ok_rps('loopshare'):,.0f} vs {working.ok_rps('stock'):,.0f}, "
            f"stock opening {working.conns('stock'):.1f} conns / request); "
            f"{conns:.2f} conns / request; with the same module-level client stock "
            f"fails {ours.failures['stock']} / {ours.requests['stock']} requests",
            speedup >= 2 and abs(conns - 1) < 0.05,
        )
    )
    ours_errors = {label: case.errors["loopshare"] for label, case in results.items()}
    if any(case.failures["loopshare"] for case in results.values()) or any(
        ours_errors.values()
    ):
        section.error = f"adapter requests failed: {ours_errors}"
    return [section]


@dataclasses.dataclass
class Case:
    """One case of the scenario: timings plus what the workers counted."""

    measured: dict[str, Measured]
    requests: dict[str, int]
    failures: dict[str, int]
    errors: dict[str, dict[str, int]]

    @classmethod
    def of(
        cls,
        measured: dict[str, Measured],
        before: dict[str, dict[str, Any]],
        after: dict[str, dict[str, Any]],
    ) -> Case:
        def delta(key: str) -> dict[str, int]:
            return {
                h: after[f"redis/{h}"][key] - before[f"redis/{h}"][key]
                for h in HANDLERS
            }

        return cls(
            measured,
            delta("n_requests"),
            delta("n_failures"),
            {
                h: _diff_errors(
                    after[f"redis/{h}"].get("info_errors", {}),
                    before[f"redis/{h}"].get("info_errors", {}),
                )
                for h in HANDLERS
            },
        )

    def ok_rps(self, handler: str) -> float:
        m = self.measured[f"redis/{handler}"]
        ok = 1 - self.failures[handler] / max(1, self.requests[handler])
        return ok * 1e6 / m.wall_us

    def conns(self, handler: str) -> float:
        deltas = self.measured[f"redis/{handler}"].deltas
        return sum(deltas) / len(deltas) if deltas else float("nan")
