from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings
from django.core.signals import request_finished


class BenchConfig(AppConfig):  # type: ignore[misc]
    name = "benchapp"

    def ready(self) -> None:
        from benchapp import receivers

        if settings.PROFILE == "k3":
            request_finished.connect(receivers.async_finished)
        elif settings.PROFILE == "redis":
            request_finished.connect(receivers.close_redis)
