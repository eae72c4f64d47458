"""One channel-layer round trip per request, from a sync view and an async view.

``alias`` picks the layer: ``"default"`` (``RedisChannelLayer``) or ``"pubsub"``
(``RedisPubSubChannelLayer``). Each request uses a channel and a group of its
own; the body names the number the request sent and the number it received,
e.g. ``7 received 7``.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.http import HttpResponse

#: channels_redis's core layer lets only one event loop receive at a time
#: ("Two event loops are trying to receive() on one channel layer at once!"),
#: and a WSGI server runs one loop per request thread. So WSGI code that
#: receives on several threads has to take turns, as a real application would:
#: one process-wide lock around each core-layer ``receive()``. The pub/sub
#: layer keeps its state per loop and needs none.
#:
#: ``receive()`` returns before it is quite done: a task it spawned (the
#: cleaner of the layer's backup queue, one Redis round trip) still holds an
#: asyncio lock that every loop's next ``receive()`` takes. Another loop that
#: waits for it then is never woken by its release, and that lock stays bound
#: to the wrong loop ("is bound to a different event loop") for good. So the
#: lock is released only once the cleaner is done: an async view awaits it
#: (``wait_received()``); a sync view cannot, and relies on ``async_to_sync``
#: not returning before the tasks its call spawned have finished or been
#: cancelled (stock cancels them; the adapter lets them finish).
RECEIVE_LOCK = threading.Lock()


def _message(number: int) -> dict[str, Any]:
    return {"type": "round.trip", "number": number}


def _answer(number: int, message: dict[str, Any]) -> HttpResponse:
    text = f"{number} received {message['number']}"
    return HttpResponse(text.encode(), content_type="text/plain")


def round_trip_sync(request: Any, alias: str, number: int) -> HttpResponse:
    """One ``async_to_sync`` per step. Under stock Django each step runs in an
    event loop of its own; with the adapter all of them share the request's."""
    layer = get_channel_layer(alias)
    group = f"round-trip.{uuid.uuid4().hex}"
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(group, channel)
    async_to_sync(layer.group_send)(group, _message(number))
    if alias == "default":
        with RECEIVE_LOCK:
            message = async_to_sync(layer.receive)(channel)
    else:
        message = async_to_sync(layer.receive)(channel)
    async_to_sync(layer.group_discard)(group, channel)
    return _answer(number, message)


async def round_trip_async(request: Any, alias: str, number: int) -> HttpResponse:
    """The same steps in one coroutine (one ``async_to_sync`` for the view)."""
    layer = get_channel_layer(alias)
    group = f"round-trip.{uuid.uuid4().hex}"
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    await layer.group_send(group, _message(number))
    if alias == "default":
        # Waiting for the lock in a thread keeps this loop free meanwhile.
        await asyncio.to_thread(RECEIVE_LOCK.acquire)
        try:
            message = await layer.receive(channel)
            await layer.wait_received()
        finally:
            RECEIVE_LOCK.release()
    else:
        message = await layer.receive(channel)
    await layer.group_discard(group, channel)
    return _answer(number, message)


def ping_view(request: Any) -> HttpResponse:
    """Answers once the server is up."""
    return HttpResponse(b"pong", content_type="text/plain")
