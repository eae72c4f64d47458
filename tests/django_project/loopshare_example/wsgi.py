"""WSGI entry point; ``WSGI_APPLICATION`` points here, so runserver serves it too."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loopshare_example.settings")

if os.environ.get("LOOPSHARE_ADAPTER", "1") == "1":
    from asgiref_loopshare.django import get_wsgi_application
else:
    from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
