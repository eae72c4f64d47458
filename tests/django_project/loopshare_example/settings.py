"""Settings of the example project (see the package docstring for the variables)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

ADAPTER = os.environ.get("LOOPSHARE_ADAPTER", "1") == "1"
PROBES = os.environ.get("LOOPSHARE_PROBES", "1") == "1"

SECRET_KEY = "asgiref-loopshare-example-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "loopshare_example",
]
if ADAPTER:
    # The one line that turns the adapter on.
    INSTALLED_APPS.append("asgiref_loopshare.django")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
if PROBES:
    MIDDLEWARE.insert(0, "loopshare_example.middleware.ProbeMiddleware")
    MIDDLEWARE.append("loopshare_example.middleware.RedisCountingMiddleware")

ROOT_URLCONF = "loopshare_example.urls"
WSGI_APPLICATION = "loopshare_example.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("LOOPSHARE_DB", str(BASE_DIR / "db.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
STATIC_URL = "static/"

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
FILES_DIR = Path(
    os.environ.get("LOOPSHARE_FILES", Path(tempfile.gettempdir()) / "loopshare-example")
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["console"], "level": "ERROR"}},
}
