"""Scenarios 1 and 2: a trivial coroutine through each way of calling it.

One unit is one *context* (or, for the modes without a context, the same
number of calls); the batch argument is the number of calls per context.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from loopbench import harness
from loopbench.harness import Config, Mode, Pool
from loopbench.report import (
    Goal,
    Section,
    Table,
    line_plot,
    memory_table,
    spread,
    times,
    us,
)
from loopbench.worker import BaseWorkload

CALLS_PER_CONTEXT = (1, 2, 10, 100)


async def trivial() -> None:
    return None


class CallsWorkload(BaseWorkload):
    def __init__(self, params: dict[str, Any]) -> None:
        from asgiref.sync import AsyncSingleThreadContext, async_to_sync

        self.mode = params["mode"]
        self.context = AsyncSingleThreadContext
        self.async_to_sync = async_to_sync
        if self.mode.startswith("loopshare"):
            import asgiref_loopshare

            asgiref_loopshare.install()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.executor: ThreadPoolExecutor | None = None
        if self.mode in ("bare_hop", "same_thread"):
            self.loop = asyncio.new_event_loop()
        if self.mode == "bare_hop":
            self.executor = ThreadPoolExecutor(1)
        self.loop_thread: threading.Thread | None = None
        if self.mode == "asgiref_outer_loop":
            # What asgiref does when a loop already runs: sync_to_async's
            # thread_handler leaves it in SyncToAsync.threadlocal, and
            # async_to_sync schedules onto it and waits in a
            # CurrentThreadExecutor. Stock asgiref, not installed.
            from asgiref.sync import SyncToAsync

            self.loop = asyncio.new_event_loop()
            self.loop_thread = threading.Thread(
                target=self.loop.run_forever, daemon=True
            )
            self.loop_thread.start()
            SyncToAsync.threadlocal.main_event_loop = self.loop
            SyncToAsync.threadlocal.main_event_loop_pid = os.getpid()

    def run(self, n: int, arg: Any) -> None:
        from asgiref_loopshare._current_executor import LeanCurrentThreadExecutor
        from asgiref_loopshare._loop import LoopExecutor

        calls = int(arg)
        a2s = self.async_to_sync
        if self.mode in ("stock_ctx", "loopshare_ctx"):
            context = self.context
            for _ in range(n):
                with context():  # type: ignore[no-untyped-call]
                    for _ in range(calls):
                        a2s(trivial)()
        elif self.mode in ("stock", "loopshare_noctx", "asgiref_outer_loop"):
            for _ in range(n * calls):
                a2s(trivial)()
        elif self.mode == "bare_hop":
            assert self.executor is not None
            assert self.loop is not None
            submit, run = self.executor.submit, self.loop.run_until_complete
            for _ in range(n * calls):
                submit(run, trivial()).result()
        elif self.mode == "loop_executor":
            # The core's _loop layer alone: start_call and wait on its future.
            executor = LoopExecutor()
            for _ in range(n * calls):
                executor.start_call(trivial()).done.result()
            executor.shutdown()
        elif self.mode == "loop_executor_cte":
            # ... waiting in a CurrentThreadExecutor, as the calling thread must
            # (the package's LeanCurrentThreadExecutor, as an in-context call).
            executor = LoopExecutor()
            for _ in range(n * calls):
                waiter = LeanCurrentThreadExecutor(None)
                done = executor.start_call(trivial()).done
                waiter.run_until_future(done)  # type: ignore[arg-type]
            executor.shutdown()
        elif self.mode == "same_thread":
            assert self.loop is not None
            run = self.loop.run_until_complete
            for _ in range(n * calls):
                run(trivial())
        else:
            raise ValueError(self.mode)

    def close(self) -> None:
        if self.loop_thread is not None:
            assert self.loop is not None
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.loop_thread.join()
        if self.executor is not None:
            self.executor.shutdown()
        if self.loop is not None:
            self.loop.close()


def make(params: dict[str, Any]) -> CallsWorkload:
    return CallsWorkload(params)


FACTORY = "loopbench.scenarios.calls:make"
#: Mode-name suffix: the calls come from a non-main thread of the worker.
_THREAD = "+thread"
LABELS = {
    "stock": "stock async_to_sync (no context)",
    "stock_ctx": "stock, inside AsyncSingleThreadContext",
    "loopshare_ctx": "loopshare, inside a context",
    "loopshare_ctx+thread": "loopshare, inside a context, from a non-main thread",
    "loopshare_noctx": "loopshare installed, no context (= stock path)",
    "bare_hop": "floor: bare hop (1-worker executor, persistent loop)",
    "loop_executor": "layer: core LoopExecutor.start_call + wait (no asgiref)",
    "loop_executor_cte": "layer: ... waiting in a CurrentThreadExecutor (lean)",
    "same_thread": "floor: run_until_complete on the calling thread",
    "asgiref_outer_loop": "reference: stock asgiref scheduling onto a running loop",
}


def _modes(names: list[str]) -> list[Mode]:
    return [
        Mode(
            name,
            FACTORY,
            {"mode": name.removesuffix(_THREAD)},
            thread=name.endswith(_THREAD),
        )
        for name in names
    ]


def run(config: Config) -> list[Section]:
    per_call = _per_call(config)
    per_context = _per_context(config)
    return [per_call, per_context]


def _per_call(config: Config) -> Section:
    section = Section(
        "1",
        "Per call: a trivial coroutine, 1/2/10/100 calls per context",
        "µs per call = (context enter + calls + exit) / calls. The floors have no "
        "context: a call there is one hop to a persistent loop on a 1-worker "
        "executor, or `run_until_complete` without any hop.",
    )
    names = list(LABELS)
    results: dict[int, dict[str, harness.Measured]] = {}
    with Pool(config, _modes(names)) as pool:
        for calls in CALLS_PER_CONTEXT:
            measured = pool.interleave(calls)
            harness.record(config, f"calls/context={calls}", measured)
            results[calls] = measured
        switched = pool.count(100, n=config.scaled(20, 1))
        mem = pool.memory()
    table = Table(
        "CPU µs per call (wall µs) — ratio to loopshare in a context",
        ["mode", *(f"{c} call{'s' if c > 1 else ''}/ctx" for c in CALLS_PER_CONTEXT)],
    )
    for name in names:
        row = [LABELS[name]]
        for calls in CALLS_PER_CONTEXT:
            m = results[calls][name]
            ref = results[calls]["loopshare_ctx"]
            row.append(
                f"{us(m.cpu_us / calls)} ({us(m.wall_us / calls)}) "
                f"{times(m.ratio(ref))}{spread(m.ratio_spread(ref))}"
            )
        table.rows.append(row)
    section.tables.append(table)
    section.tables.append(memory_table(mem, names, LABELS))
    series = {
        LABELS[name]: (
            list(CALLS_PER_CONTEXT),
            [results[c][name].cpu_us / c for c in CALLS_PER_CONTEXT],
        )
        for name in names
    }
    section.plots.append(
        line_plot(
            config.out_dir / "per_call_latency.png",
            "Per-call CPU time vs calls per context (trivial coroutine)",
            "calls per context",
            "CPU µs per call",
            series,
            logx=True,
            logy=True,
        )
    )
    # Goals, at 100 calls per context (the steady per-call cost) and marginal.
    at = results[100]
    ours = at["loopshare_ctx"]
    ls, hop = ours.cpu_us / 100, at["bare_hop"].cpu_us / 100
    stock_ctx, stock = at["stock_ctx"].cpu_us / 100, at["stock"].cpu_us / 100
    vs_hop, vs_stock_ctx = ours.ratio(at["bare_hop"]), at["stock_ctx"].ratio(ours)
    vs_stock = at["stock"].ratio(ours)
    marginal = (
        results[100]["loopshare_ctx"].cpu_us - results[10]["loopshare_ctx"].cpu_us
    ) / 90
    hop_met, hop_ci = harness.verdict(ours, at["bare_hop"], lambda r: r <= 1.25)
    ctx_met, ctx_ci = harness.verdict(at["stock_ctx"], ours, lambda r: r >= 2.5)
    plain_met, plain_ci = harness.verdict(at["stock"], ours, lambda r: r >= 4)
    section.goals += [
        Goal(
            "in-context call vs bare hop",
            "≤ 1.25x",
            f"{times(vs_hop)}, {hop_ci} ({us(ls)} vs {us(hop)} µs at 100 "
            f"calls/ctx; marginal call {us(marginal)} µs)",
            hop_met,
        ),
        Goal(
            "vs stock in a context",
            "≥ 2.5x faster",
            f"{times(vs_stock_ctx)} faster, {ctx_ci} ({us(stock_ctx)} vs {us(ls)} µs)",
            ctx_met,
        ),
        Goal(
            "vs stock plain async_to_sync",
            "≥ 4x faster",
            f"{times(vs_stock)} faster, {plain_ci} ({us(stock)} vs {us(ls)} µs)",
            plain_met,
        ),
    ]
    layer = {name: at[name].cpu_us / 100 for name in names}
    section.findings.append(
        f"Where an in-context call's {us(layer['loopshare_ctx'])} µs go (100 calls "
        f"per context, CPU, layers measured in the same run): the thread hop to a "
        f"persistent loop {us(layer['bare_hop'])}; the core's `LoopExecutor` "
        f"machinery {_plus(layer['loop_executor'] - layer['bare_hop'])}; waiting in "
        f"a `CurrentThreadExecutor` (so thread-sensitive `sync_to_async` can "
        f"run on the caller; the package's `LeanCurrentThreadExecutor`) "
        f"{_plus(layer['loop_executor_cte'] - layer['loop_executor'])}; the asgiref "
        f"glue in `_core` (`AsyncToSync` built per call, "
        f"`AsyncToSync.executors.current` set and reset on the context variable "
        f"behind asgiref's `Local`, contextvars copied and restored on both sides "
        f"with `Local` storages re-homed, threadlocal save/restore, `_main_wrap`: "
        f"asgiref's `main_wrap` and `new_loop_wrap` as one coroutine) "
        f"{_plus(layer['loopshare_ctx'] - layer['loop_executor_cte'])}. From a "
        f"non-main thread the same call costs {us(layer['loopshare_ctx+thread'])} µs."
    )
    outer = at["asgiref_outer_loop"]
    section.findings.append(
        f"The reference for the 1.25x goal: stock asgiref's own way of reusing a "
        f"loop - what `async_to_sync` does under `sync_to_async`, scheduling onto "
        f"the outer loop that already runs and waiting in a `CurrentThreadExecutor`"
        f" - costs {us(outer.cpu_us / 100)} µs per call here, "
        f"{times(outer.ratio(at['bare_hop']))} the bare hop; loopshare costs "
        f"{times(vs_hop)} the hop, {times(ours.ratio(outer))} asgiref's own. The "
        f"gap to the hop is the per-call work that keeps asgiref's semantics, so "
        f"that `sync_to_async` inside a call keeps its thread-sensitive routing "
        f"and contextvars flow both ways: building `AsyncToSync`, a "
        f"`CurrentThreadExecutor` to wait in, `executors.current` on asgiref's "
        f"`Local`, the contextvars copied both ways, `main_wrap`'s steps. "
        f"loopshare does all of it, the first three through cheaper equivalents "
        f"(`loopshare_init`, `LeanCurrentThreadExecutor`, a direct write of the "
        f"`Local`'s variable)."
    )
    per_call = {name: switched[name]["switches"] / 100 for name in names}
    section.findings.append(
        f"Context switches per call (`getrusage`, voluntary + involuntary, all "
        f"threads of the worker, one CPU, 100 calls per context): loopshare "
        f"{per_call['loopshare_ctx']:.1f}, the bare hop "
        f"{per_call['bare_hop']:.1f}, stock asgiref onto a running loop "
        f"{per_call['asgiref_outer_loop']:.1f}. The bare hop's queue wakes its "
        f"thread while the caller still holds the GIL, so the woken thread runs, "
        f"finds the GIL taken and sleeps again; loopshare's worker (a pipe write) "
        f"and asgiref's running loop (a socket write) are woken by a system call "
        f"made with the GIL released."
    )
    one = results[1]
    section.findings.append(
        f"At 1 call per context loopshare costs {us(one['loopshare_ctx'].cpu_us)} µs "
        f"vs stock-in-context {us(one['stock_ctx'].cpu_us)} µs and stock plain "
        f"{us(one['stock'].cpu_us)} µs; installing without a context costs "
        f"{times(one['loopshare_noctx'].ratio(one['stock']))} stock."
    )
    return section


def _plus(value: float) -> str:
    return f"{'+' if value >= 0 else '-'}{us(abs(value))} µs"


def _per_context(config: Config) -> Section:
    section = Section(
        "2",
        "Cost per context: enter + exit with 0 calls and with 1 call",
        "µs per context. Threads started (`threading.Thread.start`) and event loops "
        "constructed (`BaseEventLoop.__init__`) are counted per context over a "
        "separate, untimed batch after warm-up (loopshare's worker threads are "
        "pooled, so a warm process starts none).",
    )
    names = ["stock_ctx", "loopshare_ctx", "stock"]
    table = Table(
        "",
        [
            "mode",
            "calls",
            "CPU µs / context",
            "wall µs",
            "vs stock ctx",
            "threads / ctx",
            "loops / ctx",
        ],
    )
    goals_data: dict[tuple[str, int], dict[str, Any]] = {}
    with Pool(config, _modes(names)) as pool:
        for calls in (0, 1):
            active = names if calls else names[:2]
            measured = pool.interleave(calls) if calls else _without(pool, "stock", 0)
            harness.record(config, f"context/calls={calls}", measured)
            counts = pool.count(calls, n=config.scaled(200, 10))
            for name in active:
                m, c = measured[name], counts[name]
                goals_data[(name, calls)] = c
                table.rows.append(
                    [
                        LABELS[name],
                        str(calls),
                        us(m.cpu_us),
                        us(m.wall_us),
                        times(m.ratio(measured["stock_ctx"])),
                        f"{c['threads']:.2f}",
                        f"{c['loops']:.2f}",
                    ]
                )
        mem = pool.memory()
    section.tables += [table, memory_table(mem, names, LABELS)]
    empty = goals_data[("loopshare_ctx", 0)]
    section.goals.append(
        Goal(
            "context with no call creates nothing",
            "0 threads, 0 loops",
            f"{empty['threads']:.2f} threads, {empty['loops']:.2f} loops per context",
            empty["threads"] == 0 and empty["loops"] == 0,
        )
    )
    return section


def _without(pool: Pool, skip: str, arg: Any) -> dict[str, harness.Measured]:
    """Interleave all modes but *skip* (0 calls without a context is nothing)."""
    saved = pool.workers.pop(skip)
    try:
        return pool.interleave(arg)
    finally:
        pool.workers[skip] = saved
