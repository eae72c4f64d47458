"""Tasks a call spawns: waited for while they make progress, never for a fixed time.

A fire-and-forget task waiting for a reply (channels_redis releases a lock in
one, DESIGN-NOTES §7) must finish inside the call that spawned it; a task
waiting for something that will not come during the call (a pool's idle
workers, a subscriber's reader, a keep-alive) must not hold the call. Replies
here come from a local server that answers after a delay, so that a rule tuned
to loopback timing cannot pass.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from asgiref.sync import AsyncSingleThreadContext

from asgiref_loopshare import _loop
from tests.conftest import AsyncToSyncFactory


class DelayedEcho:
    """A TCP server on 127.0.0.1 that echoes each line after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(0.05)  # to see `closed` without a connection
        while not self.closed.is_set():
            try:
                connection, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            connection.settimeout(None)
            threading.Thread(target=self._echo, args=(connection,), daemon=True).start()

    def _echo(self, connection: socket.socket) -> None:
        with connection, connection.makefile("rb") as lines:
            try:
                for line in lines:
                    if self.closed.wait(self.delay):
                        return
                    connection.sendall(line)
            except OSError:  # the client went away (a task cancelled at exit)
                return

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        self.thread.join(5)


@pytest.fixture(params=[0.0, 0.05], ids=["loopback", "50ms-replies"])
def echo(request: pytest.FixtureRequest) -> Iterator[DelayedEcho]:
    server = DelayedEcho(request.param)
    yield server
    server.close()


class Client:
    """One connection to the echo server, on the loop it was opened on."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, server: DelayedEcho) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", server.port))

    async def round_trip(self, text: str = "ping") -> str:
        self.writer.write(f"{text}\n".encode())
        await self.writer.drain()
        return (await self.reader.readline()).decode().strip()

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@pytest.fixture
def long_grace() -> None:
    """A bound so long that a call waiting for it would hang the test run."""
    _loop.configure(task_grace=3600)


def test_a_task_waiting_for_a_reply_finishes_before_the_call_returns(
    async_to_sync: AsyncToSyncFactory, echo: DelayedEcho, long_grace: None
) -> None:
    released: list[str] = []

    async def receive() -> asyncio.Task[None]:
        client = await Client.open(echo)
        await client.round_trip()  # the call's own reply: what "soon" means here

        async def clean_up() -> None:  # as channels_redis's _clean_receive_backup
            released.append(await client.round_trip("release"))
            await client.close()

        return asyncio.ensure_future(clean_up())

    with AsyncSingleThreadContext():
        task = async_to_sync(receive)()
        assert released == ["release"]
        assert task.done()


def test_a_task_making_progress_reply_after_reply_is_waited_for(
    async_to_sync: AsyncToSyncFactory, echo: DelayedEcho, long_grace: None
) -> None:
    replies: list[str] = []

    async def start() -> None:
        client = await Client.open(echo)
        await client.round_trip()

        async def several() -> None:
            for number in range(5):
                replies.append(await client.round_trip(str(number)))
            await client.close()

        asyncio.ensure_future(several())  # noqa: RUF006 - fire and forget

    with AsyncSingleThreadContext():
        async_to_sync(start)()
        assert replies == ["0", "1", "2", "3", "4"]


def _event_nobody_sets() -> Callable[[], asyncio.Future[object]]:
    async def wait() -> object:
        return await asyncio.Event().wait()

    return lambda: asyncio.ensure_future(wait())


def _keep_alive() -> Callable[[], asyncio.Future[object]]:
    pings: list[int] = []

    async def ping_every_hour() -> object:
        while True:
            await asyncio.sleep(3600)
            pings.append(1)

    return lambda: asyncio.ensure_future(ping_every_hour())


def _idle_queue_worker() -> Callable[[], asyncio.Future[object]]:
    # A pool's worker (psycopg_pool): waits for work that no call has queued.
    async def worker() -> object:
        queue: asyncio.Queue[object] = asyncio.Queue()
        return await queue.get()

    return lambda: asyncio.ensure_future(worker())


@pytest.mark.parametrize(
    "make",
    [_event_nobody_sets, _keep_alive, _idle_queue_worker],
    ids=["event", "keep-alive", "queue-worker"],
)
def test_a_task_waiting_for_what_will_not_come_does_not_hold_the_call(
    async_to_sync: AsyncToSyncFactory,
    make: Callable[[], Callable[[], asyncio.Future[object]]],
    long_grace: None,
) -> None:
    spawn = make()

    async def start() -> asyncio.Future[object]:
        return spawn()

    with AsyncSingleThreadContext():
        task = async_to_sync(start)()  # with task_grace=3600, a wait would hang
        assert not task.done()
    assert task.cancelled()


def test_a_silent_reader_beside_a_finished_cleaner_does_not_hold_the_call(
    async_to_sync: AsyncToSyncFactory, echo: DelayedEcho, long_grace: None
) -> None:
    # A pub/sub layer's reader task lives as long as its connection.
    released: list[str] = []

    async def round_trip_with_reader() -> asyncio.Task[None]:
        client = await Client.open(echo)
        await client.round_trip()
        reader = await Client.open(echo)

        async def read_forever() -> None:
            while True:
                await reader.reader.readline()

        async def clean_up() -> None:
            released.append(await client.round_trip("release"))

        asyncio.ensure_future(clean_up())  # noqa: RUF006 - fire and forget
        return asyncio.ensure_future(read_forever())

    with AsyncSingleThreadContext():
        reader_task = async_to_sync(round_trip_with_reader)()
        assert released == ["release"]
        assert not reader_task.done()


def test_a_reader_polling_on_a_short_timeout_does_not_hold_the_call(
    async_to_sync: AsyncToSyncFactory, echo: DelayedEcho, long_grace: None
) -> None:
    # channels_redis's RedisPubSubChannelLayer: get_message(timeout=0.1) in a loop.
    polls: list[int] = []

    async def subscribe() -> asyncio.Task[None]:
        subscriber = await Client.open(echo)
        await subscriber.round_trip("subscribe")

        async def poll() -> None:
            while True:
                try:
                    await asyncio.wait_for(subscriber.reader.readline(), 0.1)
                except asyncio.TimeoutError:
                    polls.append(1)

        return asyncio.ensure_future(poll())

    with AsyncSingleThreadContext():
        task = async_to_sync(subscribe)()
        assert not task.done()
        assert polls == []  # not even one poll's timeout waited for


@pytest.fixture
def slow_echo() -> Iterator[DelayedEcho]:
    server = DelayedEcho(0.05)
    yield server
    server.close()


def test_a_reply_to_what_the_call_sent_does_not_hold_it_for_a_reader(
    async_to_sync: AsyncToSyncFactory, slow_echo: DelayedEcho, long_grace: None
) -> None:
    # RedisPubSubChannelLayer.group_discard sends UNSUBSCRIBE and returns; the
    # reply is read later by the layer's reader task. Stock cancels the reader
    # at once; waiting for that reply would add a round trip to every call.
    read: list[str] = []

    async def unsubscribe() -> asyncio.Task[None]:
        subscriber = await Client.open(slow_echo)
        await subscriber.round_trip("subscribe")

        async def reader() -> None:
            while True:
                read.append((await subscriber.reader.readline()).decode().strip())

        task = asyncio.ensure_future(reader())
        subscriber.writer.write(b"unsubscribe\n")  # the call's own request
        return task

    with AsyncSingleThreadContext():
        task = async_to_sync(unsubscribe)()
        assert read == []  # its reply was not waited for
        assert not task.done()


def test_task_grace_bounds_the_wait_for_a_task_that_never_stops_talking(
    async_to_sync: AsyncToSyncFactory, echo: DelayedEcho
) -> None:
    _loop.configure(task_grace=0.2)

    async def start() -> asyncio.Task[None]:
        client = await Client.open(echo)
        await client.round_trip()

        async def chatter() -> None:
            while True:
                await client.round_trip()

        return asyncio.ensure_future(chatter())

    with AsyncSingleThreadContext():
        task = async_to_sync(start)()
        assert not task.done()


def test_no_wait_at_all_with_task_grace_zero(
    async_to_sync: AsyncToSyncFactory, echo: DelayedEcho
) -> None:
    _loop.configure(task_grace=0)
    released: list[str] = []

    async def receive() -> asyncio.Task[None]:
        client = await Client.open(echo)
        await client.round_trip()

        async def clean_up() -> None:
            released.append(await client.round_trip("release"))

        return asyncio.ensure_future(clean_up())

    async def wait_for(task: asyncio.Task[None]) -> None:
        await task

    with AsyncSingleThreadContext():
        task = async_to_sync(receive)()
        assert released == []  # frozen until the next call
        async_to_sync(wait_for)(task)  # which runs the loop again
        assert released == ["release"]
