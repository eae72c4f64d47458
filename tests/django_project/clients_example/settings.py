"""Settings of the loop-bound clients example (see the package docstring)."""

from __future__ import annotations

import os

ADAPTER = os.environ.get("LOOPSHARE_ADAPTER", "1") == "1"

SECRET_KEY = "asgiref-loopshare-clients-example-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = ["clients_example"]
if ADAPTER:
    # The one line that turns the adapter on.
    INSTALLED_APPS.append("asgiref_loopshare.django")

MIDDLEWARE = ["clients_example.middleware.EchoMiddleware"]

ROOT_URLCONF = "clients_example.urls"
WSGI_APPLICATION = "clients_example.wsgi.application"

# No Django database: the clients connect on their own.
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

PSYCOPG_DSN = os.environ.get("LOOPSHARE_PSYCOPG_DSN", "")
ASYNCPG_DSN = os.environ.get("LOOPSHARE_ASYNCPG_DSN", "")
REDIS_URL = os.environ.get("LOOPSHARE_REDIS_URL", "redis://127.0.0.1:6379/0")
HTTP_URL = os.environ.get("LOOPSHARE_HTTP_URL", "http://127.0.0.1:8000")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["console"], "level": "ERROR"}},
}
