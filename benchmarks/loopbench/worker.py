"""A benchmark worker process: one workload, pinned to one CPU, driven over a pipe.

Started by `loopbench.harness.Worker` as ``python -m loopbench.worker SPEC``
where SPEC is JSON ``{"factory": "module:function", "params": {...}, "cpu": N,
"thread": bool}`` (``thread``: run the workload on one persistent non-main
thread, as a WSGI server does, instead of the main thread).
It answers one JSON line per command line read on stdin; the workload's own
prints go to stderr, never into the protocol.

Commands (``op``):

- ``time``: run ``n`` units; CPU time (the whole process: the calling thread
  *and* the loop worker threads) and wall time per unit.
- ``count``: run ``n`` units counting threads started and event loops created.
- ``gc``: run ``n`` units with the cyclic GC off; objects it then finds.
- ``probe``: the workload's own checks (e.g. response freed by refcount).
- ``contextvars``: how many context variables the thread that runs the
  workload has in its context (``len(contextvars.copy_context())`` read there).
- ``stats``: the workload's counters (errors, ...) plus RSS and peak RSS.
- ``quit``.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import importlib
import json
import os
import resource
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

_T = TypeVar("_T")


class Workload(Protocol):
    """What a scenario runs in a worker; ``run`` may return per-unit latencies.

    ``prepare(arg)`` runs before each ``run(n, arg)``, outside the clock: a
    change switched on or off there (the same-process A/B) is not timed.
    """

    def prepare(self, arg: Any) -> None: ...

    def run(self, n: int, arg: Any) -> list[float] | None: ...

    def stats(self) -> dict[str, Any]: ...

    def probe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class BaseWorkload:
    """Defaults for the optional parts of `Workload`."""

    def prepare(self, arg: Any) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        return {}

    def probe(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        return None


def memory() -> dict[str, int]:
    """Current and peak resident set size of this process, in KiB."""
    out = {"rss_kib": 0, "peak_rss_kib": 0}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    out["rss_kib"] = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    out["peak_rss_kib"] = int(line.split()[1])
    except OSError:
        pass
    return out


class Creations:
    """Counts ``Thread.start`` calls and event loops constructed, while active."""

    def __init__(self) -> None:
        self.threads = 0
        self.loops = 0

    @contextmanager
    def counting(self) -> Iterator[Creations]:
        start = threading.Thread.start
        loop_init = asyncio.BaseEventLoop.__init__
        lock = threading.Lock()

        def counted_start(thread: threading.Thread) -> None:
            with lock:
                self.threads += 1
            start(thread)

        def counted_init(loop: asyncio.BaseEventLoop) -> None:
            with lock:
                self.loops += 1
            loop_init(loop)

        threading.Thread.start = counted_start  # type: ignore[method-assign,assignment]
        asyncio.BaseEventLoop.__init__ = counted_init  # type: ignore[method-assign,assignment]
        try:
            yield self
        finally:
            threading.Thread.start = start  # type: ignore[method-assign]
            asyncio.BaseEventLoop.__init__ = loop_init  # type: ignore[method-assign]


def _load(factory: str) -> Callable[[dict[str, Any]], Workload]:
    module, _, name = factory.partition(":")
    made: Callable[[dict[str, Any]], Workload] = getattr(
        importlib.import_module(module), name
    )
    return made


class _Caller:
    """Runs the workload on the main thread or on one persistent other thread.

    WSGI servers call the application from their own threads, never the main
    one; the per-batch hop to that thread is outside the loop of units.
    """

    def __init__(self, on_thread: bool) -> None:
        self.executor = ThreadPoolExecutor(1) if on_thread else None
        if self.executor is not None:
            self.executor.submit(int).result()  # start the thread now

    def __call__(self, fn: Callable[[], _T]) -> _T:
        if self.executor is None:
            return fn()
        return self.executor.submit(fn).result()


def _time(
    workload: Workload, call: _Caller, n: int, arg: Any, gc_enabled: bool
) -> dict[str, Any]:
    call(lambda: workload.prepare(arg))
    gc.collect()
    if not gc_enabled:
        gc.disable()
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        latencies = call(lambda: workload.run(n, arg))
        cpu1, wall1 = time.process_time(), time.perf_counter()
    finally:
        gc.enable()
    return {
        "cpu": (cpu1 - cpu0) / n,
        "wall": (wall1 - wall0) / n,
        "latencies": latencies or [],
    }


def _count(workload: Workload, call: _Caller, n: int, arg: Any) -> dict[str, Any]:
    call(lambda: workload.prepare(arg))
    creations = Creations()
    before = threading.active_count()
    switches = _context_switches()
    with creations.counting():
        call(lambda: workload.run(n, arg))
    return {
        "threads": creations.threads / n,
        "loops": creations.loops / n,
        # Voluntary + involuntary, all threads of the process.
        "switches": (_context_switches() - switches) / n,
        "threads_alive_before": before,
        "threads_alive_after": threading.active_count(),
    }


def _context_switches() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw + usage.ru_nivcsw


def _gc(workload: Workload, call: _Caller, n: int, arg: Any) -> dict[str, Any]:
    call(lambda: workload.prepare(arg))
    gc.collect()
    gc.disable()
    try:
        call(lambda: workload.run(n, arg))
        found = gc.collect()
    finally:
        gc.enable()
    return {"gc_objects": found / n}


def serve(spec: dict[str, Any]) -> None:
    # The protocol gets its own copy of stdout; anything printed goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    cpu = spec.get("cpu")
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(cpu)})
    call = _Caller(bool(spec.get("thread")))
    workload = call(lambda: _load(spec["factory"])(spec.get("params", {})))
    proto.write(json.dumps({"ok": True, "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        n = int(command.get("n", 1))
        arg = command.get("arg")
        try:
            if op == "quit":
                break
            if op == "time":
                reply = _time(workload, call, n, arg, command.get("gc", True))
            elif op == "count":
                reply = _count(workload, call, n, arg)
            elif op == "gc":
                reply = _gc(workload, call, n, arg)
            elif op == "probe":
                reply = call(workload.probe)
            elif op == "contextvars":
                reply = {"contextvars": call(lambda: len(contextvars.copy_context()))}
            elif op == "stats":
                reply = {**workload.stats(), **memory()}
            else:
                raise ValueError(f"unknown op {op!r}")
            reply["ok"] = True
        except Exception as exc:
            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        proto.write(json.dumps(reply) + "\n")
    try:
        call(workload.close)
    finally:
        proto.close()


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
