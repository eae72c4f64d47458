"""An opt-in longer scope: one shared loop per thread, for every request it serves.

`thread_scope` returns the calling thread's long-lived `LoopScope`. A server
thread that activates it around each request (``LoopShareMiddleware(app,
scope="thread")`` does) runs the async code of all the requests it serves on one
event loop, so a *loop-bound* pool - ``redis.asyncio``, ``httpx.AsyncClient`` -
opened by one request is reused by the next instead of reconnecting.

Lifecycle:

- **Created lazily**: the first `thread_scope` call in a thread creates the
  scope object; its loop (and the worker thread that runs it) starts only at the
  first ``async_to_sync`` call made while the scope is active. (The first
  thread scope of a process also starts the closer thread described next.)
- **Torn down at thread exit**: the scope is held by an object in a
  ``threading.local``; when the thread ends, CPython releases the thread's locals
  and that object's ``__del__`` closes the scope (on a short-lived helper
  thread, waited for by the exiting thread, so the loop is closed before
  ``Thread.join()`` returns).
- **Torn down at interpreter exit** (``atexit``): scopes still alive - the main
  thread's, daemon threads' - are closed, waiting at most `EXIT_TIMEOUT`
  seconds in all; a loop that takes longer is abandoned, never a hang.
- **Never inherited across fork**: in a child, `thread_scope` returns a new
  scope even in the thread that forked, and the parent's scopes are neither
  used nor closed there (their loops belong to the parent).
- `close_thread_scope` ends the calling thread's scope early; the next
  `thread_scope` call creates a new one.

Between requests the loop is idle: tasks left running (keep-alive pings, pool
reapers) are frozen until the next call in the scope, and cancelled when the
scope ends.

A longer scope suits loop-bound pools, not *task-bound* connections:
django-async-backend binds a database connection to the first asyncio task that
used it, and each ``async_to_sync`` call runs in its own task - reusing one loop
across requests without isolating them let the next request pick up the
previous request's connection (99 errors in 100 requests). Per-request scopes
remain the default everywhere.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import sys
import threading
import weakref

from asgiref_loopshare._core import LoopScope
from asgiref_loopshare._loop import get_settings

__all__ = ["EXIT_TIMEOUT", "close_thread_scope", "thread_scope"]

logger = logging.getLogger("asgiref_loopshare")

#: At interpreter exit, how long (seconds, in all) to wait for thread scopes
#: to be torn down before leaving their loops to die with the process.
EXIT_TIMEOUT = 5.0


class _Holder:
    """Owns one thread's scope; closes it when the thread's locals are released.

    The scope never refers back to its holder, so the holder dies exactly when
    the thread's ``threading.local`` storage is cleared - at thread exit, on
    the exiting thread, in CPython 3.9 - 3.13 - or when `close_thread_scope`
    replaces it.
    """

    __slots__ = ("__weakref__", "generation", "scope")

    def __init__(self, generation: int) -> None:
        self.scope = LoopScope()
        #: `_generation` when created: a different one means "inherited by a
        #: forked child", whose loop belongs to the parent.
        self.generation = generation

    def __del__(self) -> None:
        try:
            if self.generation != _generation:
                return  # inherited across fork: never touch the parent's loop
            scope = self.scope
            if not scope.started:
                # Nothing to tear down: closing only marks it closed.
                scope.close()
                return
            _close_off_thread(scope)
        except Exception:
            if not sys.is_finalizing():
                raise


class _Local(threading.local):
    holder: _Holder | None = None


_local = _Local()
#: Bumped in a forked child: holders of an older generation are the parent's.
_generation = 0
#: Live holders, for interpreter exit.
_holders: weakref.WeakSet[_Holder] = weakref.WeakSet()
_holders_lock = threading.Lock()
_atexit_registered = False


def thread_scope() -> LoopScope:
    """The calling thread's long-lived `LoopScope`, created on first use.

    Activate it around each request (``token = scope.activate()`` ...
    ``scope.deactivate(token)``) and never close it per request: it ends when
    the thread exits, at interpreter exit, or with `close_thread_scope`.
    Creating it creates no loop: the loop (and the worker thread that runs
    it) starts at the first ``async_to_sync`` call made while it is active.
    The first thread scope of a process also starts one small daemon thread
    that closes scopes at thread and interpreter exit.
    """
    holder = _local.holder
    if holder is None or holder.generation != _generation:
        holder = _new_holder()
    return holder.scope


def close_thread_scope() -> None:
    """End the calling thread's scope now, if it has one (its loop is torn down).

    The next `thread_scope` call in this thread creates a new scope. Calls
    made while the closed scope is still active behave as stock asgiref.
    """
    holder = _local.holder
    _local.holder = None
    if holder is None or holder.generation != _generation:
        return
    with _holders_lock:
        _holders.discard(holder)
    holder.scope.close()


def _new_holder() -> _Holder:
    global _atexit_registered, _closer
    holder = _Holder(_generation)
    _local.holder = holder
    with _holders_lock:
        _holders.add(holder)
        if _closer is None:
            _closer = _Closer()
        if not _atexit_registered:
            # Registered after the core's own exit hook (it stops idle
            # workers), so it runs before it: atexit is last in, first out.
            atexit.register(_close_all_at_exit)
            _atexit_registered = True
    return holder


class _Closer:
    """A daemon thread that closes scopes for threads that cannot.

    Used from ``_Holder.__del__`` while CPython clears an exiting thread's
    state: that thread is no longer in ``threading._active``, so anything that
    calls ``threading.current_thread()`` there (the core's ``close()``,
    ``logging``) would register a ``_DummyThread`` for it that is never
    removed. And at interpreter exit, where Python 3.12 refuses to start new
    threads, so that the wait stays bounded. Started with the first thread
    scope of a process.
    """

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[list[LoopScope], threading.Event]] = (
            queue.SimpleQueue()
        )
        self.thread = threading.Thread(
            target=self._run,
            args=(self.jobs,),
            name="asgiref-loopshare-scope-closer",
            daemon=True,
        )
        self.thread.start()

    @staticmethod
    def _run(jobs: queue.SimpleQueue[tuple[list[LoopScope], threading.Event]]) -> None:
        while True:
            job = jobs.get()
            _Closer._close(*job)
            del job  # holds the scopes until the next job otherwise

    @staticmethod
    def _close(scopes: list[LoopScope], done: threading.Event) -> None:
        try:
            for scope in scopes:
                try:
                    scope.close()
                except Exception:
                    logger.exception("asgiref-loopshare: error closing a thread scope")
        finally:
            done.set()

    def close(self, scopes: list[LoopScope], timeout: float) -> bool:
        """Close *scopes* on the closer thread; whether that ended in *timeout*."""
        done = threading.Event()
        self.jobs.put((scopes, done))
        return done.wait(timeout)


_closer: _Closer | None = None


def _close_off_thread(scope: LoopScope) -> None:
    """Close *scope* on the closer thread and wait for it, bounded."""
    closer = _closer
    if closer is None:  # not reached: a holder's generation has a closer
        return
    settings = get_settings()
    closer.close([scope], settings.cancel_timeout + settings.executor_timeout + 1.0)


def _close_all_at_exit() -> None:
    """Close every live thread scope, waiting at most `EXIT_TIMEOUT` in all."""
    with _holders_lock:
        holders = [holder for holder in _holders if holder.generation == _generation]
        _holders.clear()
    scopes = [holder.scope for holder in holders if holder.scope.started]
    closer = _closer
    if not scopes or closer is None:
        return
    if not closer.close(scopes, EXIT_TIMEOUT):
        logger.warning(
            "asgiref-loopshare: thread scopes still closing after %ss at "
            "interpreter exit; leaving their loops behind",
            EXIT_TIMEOUT,
        )


def _forget_after_fork() -> None:
    # The parent's scopes, the threads that ran their loops and the closer
    # thread are not the child's.
    global _closer, _generation, _holders, _holders_lock
    _generation += 1
    _holders = weakref.WeakSet()
    _holders_lock = threading.Lock()
    _closer = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
