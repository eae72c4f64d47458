"""``"asgiref_loopshare.django"`` in ``INSTALLED_APPS`` turns the adapter on."""

from __future__ import annotations

from django.apps import AppConfig

from asgiref_loopshare.django import install


class LoopShareConfig(AppConfig):  # type: ignore[misc]
    """Installs the asgiref patch and the Django patch when apps are ready."""

    name = "asgiref_loopshare.django"
    label = "asgiref_loopshare"
    verbose_name = "asgiref-loopshare"

    def ready(self) -> None:
        install()
