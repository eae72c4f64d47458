"""LiveServerTestCase builds its own WSGIHandler in a thread: the patch reaches it."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

from conftest import PROBE_MIDDLEWARE
from django.conf import settings
from django.test import LiveServerTestCase
from django.test.utils import override_settings
from loopshare_example import probe, receivers

import asgiref_loopshare.django as loopshare_django


@override_settings(MIDDLEWARE=[PROBE_MIDDLEWARE, *settings.MIDDLEWARE])
class LiveServerRequests(LiveServerTestCase):  # type: ignore[misc]
    @classmethod
    def setUpClass(cls) -> None:
        receivers.connect()
        super().setUpClass()

    @classmethod
    def tearDownClass(cls) -> None:
        super().tearDownClass()
        receivers.disconnect()

    def get(self, path: str, probe_id: str) -> int:
        connection = http.client.HTTPConnection(
            self.server_thread.host, self.server_thread.port, timeout=15
        )
        try:
            connection.request("GET", path, headers={"X-Probe": probe_id})
            response = connection.getresponse()
            response.read()
            return int(response.status)
        finally:
            connection.close()

    def events_when_finished(self, probe_id: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            events = probe.events(probe_id)
            if any(event["where"] == "request_finished" for event in events):
                return events
            time.sleep(0.05)
        raise AssertionError(f"request_finished never ran: {json.dumps(events)}")

    def test_the_live_server_runs_a_request_on_one_loop(self) -> None:
        loopshare_django.install()  # after the server thread built its handler
        try:
            assert self.get("/async/", "live") == 200
            events = self.events_when_finished("live")
        finally:
            loopshare_django.uninstall()
        assert {event["where"] for event in events} >= {"request_started", "view"}
        assert len({event["loop"] for event in events}) == 1
