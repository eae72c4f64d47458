"""``python -m asgiref_loopshare [N]``: what N calls in one context cost.

Prints, for stock asgiref and for asgiref-loopshare, the event loops and
threads created and the wall-clock microseconds per call. A quick look, not a
benchmark: ``python benchmarks/run.py`` measures properly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from asgiref.sync import AsyncSingleThreadContext, async_to_sync

import asgiref_loopshare


async def _noop() -> None:
    pass


@contextlib.contextmanager
def _counting() -> Iterator[dict[str, int]]:
    counts = {"loops": 0, "threads": 0}
    loop_init = asyncio.BaseEventLoop.__init__
    thread_start = threading.Thread.start

    def count_loop(self: asyncio.BaseEventLoop, *args: Any, **kwargs: Any) -> None:
        counts["loops"] += 1
        loop_init(self, *args, **kwargs)

    def count_thread(self: threading.Thread) -> None:
        counts["threads"] += 1
        thread_start(self)

    asyncio.BaseEventLoop.__init__ = count_loop  # type: ignore[method-assign,assignment]
    threading.Thread.start = count_thread  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        asyncio.BaseEventLoop.__init__ = loop_init  # type: ignore[method-assign]
        threading.Thread.start = thread_start  # type: ignore[method-assign]


def _measure(calls: int, contexts: int) -> tuple[int, int, float]:
    call: Callable[[], None] = async_to_sync(_noop)
    with _counting() as counts:
        start = time.perf_counter()
        for _ in range(contexts):
            with AsyncSingleThreadContext():  # type: ignore[no-untyped-call]
                for _ in range(calls):
                    call()
        elapsed = time.perf_counter() - start
    per_call = elapsed / (calls * contexts) * 1e6
    # Rounded, not floored: a context's thread may be a spare that the end of
    # the context before it started (the last one's replacement may still be
    # starting when the count is read).
    return (
        round(counts["loops"] / contexts),
        round(counts["threads"] / contexts),
        per_call,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m asgiref_loopshare")
    parser.add_argument(
        "calls", nargs="?", type=int, default=10, help="calls per context"
    )
    parser.add_argument(
        "--contexts", type=int, default=200, help="contexts to average over"
    )
    args = parser.parse_args(argv)

    print(f"{args.calls} async_to_sync call(s) per AsyncSingleThreadContext, ")
    print(f"averaged over {args.contexts} contexts (wall clock; noisy)\n")
    print(f"{'':14}{'loops/context':>15}{'threads/context':>17}{'µs per call':>13}")
    rows = {}
    for name, patched in (("stock", False), ("loopshare", True)):
        if patched:
            asgiref_loopshare.install()
        try:
            _measure(args.calls, 5)  # warm up
            rows[name] = _measure(args.calls, args.contexts)
        finally:
            asgiref_loopshare.uninstall()
        loops, threads, micros = rows[name]
        print(f"{name:14}{loops:>15}{threads:>17}{micros:>13.1f}")
    speedup = rows["stock"][2] / rows["loopshare"][2]
    print(f"\nloopshare is {speedup:.1f}x the speed of stock per call here.")


if __name__ == "__main__":
    main()
