"""One view per way async code meets a WSGI request."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.http import (
    FileResponse,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)

from loopshare_example import probe
from loopshare_example.models import Visit

FILE_SIZE = 4 * 1024 * 1024  # outlasts the socket buffers: waitress closes it elsewhere


def _probe_id(request: Any) -> str:
    return str(request.headers.get("X-Probe", ""))


def sync_view(request: Any) -> HttpResponse:
    return HttpResponse(b"sync")


async def async_view(request: Any) -> JsonResponse:
    probe.record("view")
    await asyncio.sleep(0)
    return JsonResponse({"events": probe.events(_probe_id(request))})


def _create_visit(path: str) -> int:
    Visit.objects.create(path=path)
    return int(Visit.objects.count())


async def orm_view(request: Any) -> JsonResponse:
    """The ORM through sync_to_async (runs in the request thread), then async again."""
    count = await sync_to_async(_create_visit)(request.path)
    await asyncio.sleep(0)
    probe.record("orm_view")
    return JsonResponse({"visits": count, "events": probe.events(_probe_id(request))})


async def _chunk(index: int) -> bytes:
    probe.record(f"sync_stream_{index}")
    await asyncio.sleep(0)
    return b"chunk-%d\n" % index


def sync_stream(request: Any) -> StreamingHttpResponse:
    """A sync iterator whose chunks come from async code (called while serving)."""

    def chunks() -> Iterator[bytes]:
        for index in range(3):
            yield async_to_sync(_chunk)(index)

    return StreamingHttpResponse(chunks())


def async_stream(request: Any) -> StreamingHttpResponse:
    """An async iterator: Django consumes it with async_to_sync when served."""

    async def chunks() -> AsyncIterator[bytes]:
        for index in range(3):
            probe.record(f"async_stream_{index}")
            await asyncio.sleep(0)
            yield b"chunk-%d\n" % index

    return StreamingHttpResponse(chunks())


def big_file() -> Any:
    path = settings.FILES_DIR / "big.bin"
    if not path.exists() or path.stat().st_size != FILE_SIZE:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own per writer: concurrent first requests each write
        # a complete file and the last atomic replace wins.
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(bytes(range(256)) * (FILE_SIZE // 256))
        tmp.replace(path)
    return path


def file_view(request: Any) -> FileResponse:
    return FileResponse(big_file().open("rb"))


async def redis_view(request: Any) -> JsonResponse:
    from loopshare_example import redis_client

    count = await redis_client.for_path(request.path).incr("loopshare:view")
    probe.record("redis_view")
    return JsonResponse({"count": count, "events": probe.events(_probe_id(request))})


def probe_view(request: Any, probe_id: str) -> JsonResponse:
    return JsonResponse({"events": probe.events(probe_id)})
