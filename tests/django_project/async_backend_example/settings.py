"""Settings of the django-async-backend example (see the package docstring)."""

from __future__ import annotations

import os

ADAPTER = os.environ.get("LOOPSHARE_ADAPTER", "1") == "1"

SECRET_KEY = "asgiref-loopshare-async-backend-example-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = ["django_async_backend"]
if ADAPTER:
    # The one line that turns the adapter on.
    INSTALLED_APPS.append("asgiref_loopshare.django")

MIDDLEWARE = ["async_backend_example.middleware.QueryMiddleware"]

ROOT_URLCONF = "async_backend_example.urls"
WSGI_APPLICATION = "async_backend_example.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django_async_backend.db.backends.postgresql",
        "HOST": os.environ.get("LOOPSHARE_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("LOOPSHARE_PG_PORT", "5432"),
        "NAME": os.environ.get("LOOPSHARE_PG_NAME", "loopshare"),
        "USER": os.environ.get("LOOPSHARE_PG_USER", "postgres"),
    }
}
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["console"], "level": "ERROR"}},
}
