from __future__ import annotations

from django.apps import AppConfig


class ClientsExampleConfig(AppConfig):
    name = "clients_example"

    def ready(self) -> None:
        from clients_example import receivers

        receivers.connect()
