from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings


class ExampleConfig(AppConfig):  # type: ignore[misc]
    name = "loopshare_example"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        if settings.PROBES:
            from loopshare_example import receivers

            receivers.connect()
