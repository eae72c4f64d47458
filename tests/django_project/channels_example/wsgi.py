"""WSGI entry point: Django's own; the adapter, when on, is in ``INSTALLED_APPS``."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "channels_example.settings")

application = get_wsgi_application()
