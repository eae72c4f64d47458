"""Isolation, differentially (issue #20): a program observes under loopshare what
it observes under stock asgiref - everything but which loop and which thread.

Hypothesis writes the programs. Server threads (plain ``threading.Thread``) each
serve a sequence of requests; a request runs blocks of sync code outside any
context, in ``with AsyncSingleThreadContext():`` or in two nested ones, in the
server thread's own contextvars or in an empty ``contextvars.Context()``. Sync code
calls coroutines through ``async_to_sync``; coroutines call sync code through
``sync_to_async`` (``thread_sensitive`` True or False), three ``async_to_sync``
deep at most. Every frame takes a step when it starts and after each call it
makes; a step reads, then writes, a ``ContextVar``, an asgiref ``Local()``, a
``Local(thread_critical=True)`` and a ``threading.local()``. The program runs under
stock asgiref, then with ``asgiref_loopshare.install()``, and every read must be
the same. Every program is one stock asgiref runs without error or deadlock: a
thread-sensitive call always finds its caller's thread waiting, and nesting is too
shallow to fill the loop's default executor.

A read is the name of the step that wrote the value, never a thread or a loop.
Which thread of the loop's default executor a ``thread_sensitive=False`` call gets
depends on timing, under stock asgiref too: what sync code on such a thread reads
from thread-bound storage (``threading.local``, a thread-critical ``Local``) is
reported as ``EXECUTOR`` when it is unset or was written on such a thread during
the same request. Anything else it reads - a value from another request, from a
server thread or a loop's thread - is reported as such. (Stock asgiref is stricter
than that: each ``async_to_sync`` call has an executor of its own; the last test
checks that on its own.)
"""

from __future__ import annotations

import contextvars
import itertools
import threading
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import pytest
from asgiref.local import Local
from asgiref.sync import AsyncSingleThreadContext, async_to_sync, sync_to_async
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import asgiref_loopshare
from tests.conftest import loopshare_installed

#: Where a frame runs: a server thread, the loop (a coroutine), or a thread of
#: the loop's default executor (``thread_sensitive=False`` and the
#: thread-sensitive calls nested below it).
Where = Literal["server", "coroutine", "executor"]

UNSET = "unset"
#: A thread-bound read on an executor thread: unset, or written on such a
#: thread during this request (stock asgiref may or may not reuse the thread).
EXECUTOR = "unset-or-this-request's-executor"


# -- programs --------------------------------------------------------------------


class _Node:
    """A part of a program, shown as the Python that builds it."""

    __slots__ = ()

    def _args(self) -> tuple[object, ...]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self._args()))})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # Hypothesis's "Falsifying example" uses this


class Sync(_Node):
    """Sync code: a step, then each call through ``async_to_sync``, a step after it."""

    __slots__ = ("calls",)

    def __init__(self, *calls: Async) -> None:
        self.calls = calls

    def _args(self) -> tuple[object, ...]:
        return self.calls


class SyncCall(NamedTuple):
    """``await sync_to_async(body, thread_sensitive=...)()``."""

    thread_sensitive: bool
    body: Sync


class Async(_Node):
    """A coroutine: a step, then each sync call, a step after each."""

    __slots__ = ("calls",)

    def __init__(self, *calls: SyncCall) -> None:
        self.calls = calls

    def _args(self) -> tuple[object, ...]:
        return self.calls


class Block(NamedTuple):
    """Sync code a request runs directly, in a context or not.

    ``"own"``: ``with AsyncSingleThreadContext():``; ``"nested"``: the body in a
    context, then again in a second context entered inside the first; ``"none"``:
    no context.
    """

    context: Literal["own", "nested", "none"]
    body: Sync


class Request(_Node):
    """A step, the blocks, a step; in the server thread's contextvars or fresh ones."""

    __slots__ = ("blocks", "contextvars")

    def __init__(self, contextvars: Literal["thread", "fresh"], *blocks: Block) -> None:
        self.contextvars = contextvars
        self.blocks = blocks

    def _args(self) -> tuple[object, ...]:
        return (self.contextvars, *self.blocks)


class Server(_Node):
    """A server thread and the requests it serves, in order."""

    __slots__ = ("requests",)

    def __init__(self, *requests: Request) -> None:
        self.requests = requests

    def _args(self) -> tuple[object, ...]:
        return self.requests


def syncs(depth: int) -> st.SearchStrategy[Sync]:
    """Sync code that nests at most *depth* ``async_to_sync`` calls."""
    if depth == 0:
        return st.just(Sync())
    return st.lists(asyncs(depth), max_size=2).map(lambda calls: Sync(*calls))


def asyncs(depth: int) -> st.SearchStrategy[Async]:
    """A coroutine called through ``async_to_sync``, at most *depth* deep with it."""
    call = st.builds(SyncCall, st.booleans(), syncs(depth - 1))
    return st.lists(call, max_size=2).map(lambda calls: Async(*calls))


any_block = st.builds(
    Block,
    st.sampled_from(["own", "nested", "none"]),
    st.lists(asyncs(3), min_size=1, max_size=2).map(lambda calls: Sync(*calls)),
)
any_request = st.builds(
    lambda contextvars, blocks: Request(contextvars, *blocks),
    st.sampled_from(["thread", "fresh"]),
    st.lists(any_block, min_size=1, max_size=2),
)


def servers(max_requests: int) -> st.SearchStrategy[Server]:
    return st.lists(any_request, min_size=1, max_size=max_requests).map(
        lambda requests: Server(*requests)
    )


# -- running a program -------------------------------------------------------------

#: (server thread, request, step): the steps of one request run one at a time.
Key = tuple[int, int, int]
#: Where the step ran; what it read from the ContextVar, the Local, the
#: thread-critical Local and the threading.local.
Observation = tuple[Where, str, str, str, str]

_runs = itertools.count()


class Recording:
    """What one run of a program read, and the errors it raised (none expected).

    Each run has storage of its own: a worker thread left over from an earlier
    run (or test) cannot make an example fail, so every failure replays.
    """

    def __init__(self) -> None:
        self.run = next(_runs)
        self.context_var: contextvars.ContextVar[str] = contextvars.ContextVar(
            f"differential-{self.run}"
        )
        self.local = Local()
        self.critical_local = Local(thread_critical=True)
        self.thread_local = threading.local()
        self.observations: dict[Key, Observation] = {}
        self.errors: dict[tuple[int, int], str] = {}


class RequestRun:
    """Runs one request's code on whichever threads asgiref picks, recording reads."""

    def __init__(self, recording: Recording, server: int, request: int) -> None:
        self.recording = recording
        self.server = server
        self.request = request
        self.steps = itertools.count()

    def step(self, where: Where) -> None:
        """Read the four, then write this step's mark ("server.request.step/where")."""
        number = next(self.steps)
        r = self.recording
        r.observations[self.server, self.request, number] = (
            where,
            self.read(r.context_var.get(None), where, False),
            self.read(getattr(r.local, "value", None), where, False),
            self.read(getattr(r.critical_local, "value", None), where, True),
            self.read(getattr(r.thread_local, "value", None), where, True),
        )
        mark = f"{self.server}.{self.request}.{number}/{where}"
        r.context_var.set(mark)
        r.local.value = mark
        r.critical_local.value = mark
        r.thread_local.value = mark

    def read(self, mark: str | None, where: Where, thread_bound: bool) -> str:
        if mark is None:
            return EXECUTOR if thread_bound and where == "executor" else UNSET
        step, writer = mark.split("/")
        if (
            thread_bound
            and where == writer == "executor"
            and step.startswith(f"{self.server}.{self.request}.")
        ):
            return EXECUTOR
        return step

    def serve(self, request: Request) -> None:
        def handle() -> None:
            self.step("server")
            for block in request.blocks:
                self.run_block(block)
            self.step("server")

        try:
            if request.contextvars == "fresh":
                contextvars.Context().run(handle)
            else:
                handle()
        except Exception as exc:  # recorded, compared: the thread serves on
            self.recording.errors[self.server, self.request] = repr(exc)

    def run_block(self, block: Block) -> None:
        if block.context == "none":
            self.run_sync(block.body, "server")
        elif block.context == "own":
            with AsyncSingleThreadContext():
                self.run_sync(block.body, "server")
        else:
            with AsyncSingleThreadContext():
                self.run_sync(block.body, "server")
                with AsyncSingleThreadContext():
                    self.run_sync(block.body, "server")

    def run_sync(self, body: Sync, where: Where) -> None:
        self.step(where)
        for call in body.calls:
            self.call_async(call, where)
            self.step(where)

    def call_async(self, body: Async, caller: Where) -> None:
        async def coroutine() -> None:
            await self.run_async(body, caller)

        async_to_sync(coroutine)()

    async def run_async(self, body: Async, caller: Where) -> None:
        """*caller*: where the sync code that called ``async_to_sync`` runs."""
        self.step("coroutine")
        for call in body.calls:
            where: Where = caller if call.thread_sensitive else "executor"
            run = sync_to_async(self.run_sync, thread_sensitive=call.thread_sensitive)
            await run(call.body, where)
            self.step("coroutine")


Schedule = Literal["one after another", "lockstep", "free"]


def run_program(servers: tuple[Server, ...], schedule: Schedule) -> Recording:
    """Each server thread serves its requests; *schedule* says how threads overlap.

    ``"lockstep"``: every thread serves its n-th request at the same time as the
    others serve theirs (a barrier before each round); ``"free"``: all threads
    start at once; ``"one after another"``: a thread starts when the previous
    one has ended.
    """
    recording = Recording()
    rounds = max(len(server.requests) for server in servers)
    barrier = threading.Barrier(len(servers))

    def serve_all(index: int) -> Callable[[], None]:
        def target() -> None:
            requests = servers[index].requests
            for number in range(rounds):
                if schedule == "lockstep":
                    barrier.wait()
                if number < len(requests):
                    RequestRun(recording, index, number).serve(requests[number])

        return target

    threads = [
        threading.Thread(target=serve_all(index), name=f"server-{index}")
        for index in range(len(servers))
    ]
    for thread in threads:
        thread.start()
        if schedule == "one after another":
            join(thread)
    for thread in threads:
        join(thread)
    return recording


def join(thread: threading.Thread) -> None:
    thread.join(timeout=60)  # a hang guard, not a measurement
    assert not thread.is_alive(), f"{thread.name} hangs"


def assert_loopshare_observes_what_stock_observes(
    servers: tuple[Server, ...], schedule: Schedule
) -> None:
    assert not asgiref_loopshare.is_installed(), "stock runs first: unpatched"
    stock = run_program(servers, schedule)
    assert stock.errors == {}, "the program should be one stock asgiref runs"
    with loopshare_installed():
        shared = run_program(servers, schedule)
    assert shared.errors == stock.errors
    differences = {
        key: {
            "stock": stock.observations.get(key),
            "loopshare": shared.observations.get(key),
        }
        for key in sorted(stock.observations.keys() | shared.observations.keys())
        if stock.observations.get(key) != shared.observations.get(key)
    }
    assert differences == {}


# -- the tests -----------------------------------------------------------------------

bounded = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,  # the same programs on every run, in every cell
    database=None,  # nothing written into the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

#: A coroutine writes thread-bound storage in one request's context; the next
#: request's coroutine must not see it (stock: a new thread per context).
TWO_CONTEXTS = Server(
    Request("thread", Block("own", Sync(Async()))),
    Request("thread", Block("own", Sync(Async()))),
)
#: Two calls in one context: the second coroutine sees what the first one wrote
#: in threading.local (stock: one executor thread per context).
ONE_CONTEXT = Server(Request("thread", Block("own", Sync(Async(), Async()))))
#: The same across requests in fresh contextvars, with sync code in between.
FRESH_CONTEXTS = Server(
    Request("fresh", Block("own", Sync(Async(SyncCall(True, Sync()))))),
    Request("fresh", Block("nested", Sync(Async()))),
)


def test_stock_asgiref_shares_thread_locals_between_the_calls_of_a_context() -> None:
    # What the differential tests rely on: stock runs a context's calls on one
    # thread, so the second coroutine reads the first one's thread-bound values.
    observed = run_program((ONE_CONTEXT,), "one after another").observations
    assert observed[0, 0, 4] == ("coroutine", "0.0.3", "0.0.3", "0.0.2", "0.0.2")


def test_stock_asgiref_gives_each_context_new_thread_locals() -> None:
    observed = run_program((TWO_CONTEXTS,), "one after another").observations
    assert observed[0, 1, 2] == ("coroutine", "0.1.1", "0.1.1", UNSET, UNSET)


@bounded
@given(server=servers(max_requests=3))
@example(server=TWO_CONTEXTS)
@example(server=ONE_CONTEXT)
@example(server=FRESH_CONTEXTS)
def test_requests_on_one_server_thread_observe_what_stock_observes(
    server: Server,
) -> None:
    assert_loopshare_observes_what_stock_observes((server,), "one after another")


@bounded
@given(servers=st.lists(servers(max_requests=2), min_size=2, max_size=3).map(tuple))
@example(servers=(TWO_CONTEXTS, TWO_CONTEXTS))
def test_server_threads_one_after_another_observe_what_stock_observes(
    servers: tuple[Server, ...],
) -> None:
    assert_loopshare_observes_what_stock_observes(servers, "one after another")


@bounded
@pytest.mark.parametrize("schedule", ["lockstep", "free"])
@given(servers=st.lists(servers(max_requests=2), min_size=2, max_size=3).map(tuple))
@example(servers=(TWO_CONTEXTS, TWO_CONTEXTS))
def test_concurrent_server_threads_observe_what_stock_observes(
    schedule: Schedule, servers: tuple[Server, ...]
) -> None:
    assert_loopshare_observes_what_stock_observes(servers, schedule)


def test_thread_insensitive_code_never_sees_an_earlier_calls_thread_locals() -> None:
    # Stock: each call's loop has a default executor of its own, shut down when
    # the call ends, so thread_sensitive=False code never finds what the same
    # context's earlier calls left in its thread's thread-locals.
    plain = threading.local()
    critical = Local(thread_critical=True)

    def read_then_write(mark: str) -> tuple[str, str]:
        seen = (getattr(plain, "value", UNSET), getattr(critical, "value", UNSET))
        plain.value = critical.value = mark
        return seen

    async def call(mark: str) -> tuple[str, str]:
        return await sync_to_async(read_then_write, thread_sensitive=False)(mark)

    def request() -> list[tuple[str, str]]:
        with AsyncSingleThreadContext():
            return [async_to_sync(call)(f"call {number}") for number in range(4)]

    stock = request()
    with loopshare_installed():
        shared = request()
    assert stock == [(UNSET, UNSET)] * 4
    assert shared == stock
