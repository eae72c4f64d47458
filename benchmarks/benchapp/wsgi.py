"""WSGI entry for gunicorn: ``BENCH_HANDLER`` is ``stock`` or ``loopshare``."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchapp.settings")


def _application() -> Any:
    if os.environ.get("BENCH_HANDLER", "stock") == "loopshare":
        import asgiref_loopshare.django

        return asgiref_loopshare.django.get_wsgi_application()
    import django.core.wsgi

    return django.core.wsgi.get_wsgi_application()


application = _application()
