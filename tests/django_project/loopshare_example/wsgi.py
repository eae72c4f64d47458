"""WSGI entry point; ``WSGI_APPLICATION`` points here, so runserver serves it too."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loopshare_example.settings")


def _application() -> Any:
    if os.environ.get("LOOPSHARE_ADAPTER", "1") == "1":
        from asgiref_loopshare.django import get_wsgi_application

        return get_wsgi_application()
    from django.core.wsgi import get_wsgi_application as stock_get_wsgi_application

    return stock_get_wsgi_application()


application = _application()
