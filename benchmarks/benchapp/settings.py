"""Settings of the benchmark project; ``BENCH_PROFILE`` picks the middleware."""

from __future__ import annotations

import os

PROFILE = os.environ.get("BENCH_PROFILE", "wsgi")

_BASE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
_MIDDLEWARE = {
    "wsgi": [*_BASE, "benchapp.middleware.sync_only"],
    "k1": [*_BASE, "benchapp.middleware.sync_only"],
    "k3": [*_BASE, "benchapp.middleware.async_only"],
    "k10": [*_BASE, "benchapp.middleware.sync_calls_async"],
    "redis": [*_BASE, "benchapp.middleware.sync_only"],
    "mixed": [*_BASE, "benchapp.middleware.sync_only"],
    # A WSGI-only project as `django-admin startproject` lays it out.
    "project": [
        "django.middleware.security.SecurityMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    ],
}
_CONTRIB_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
]

SECRET_KEY = "benchmarks-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "benchapp.urls"
INSTALLED_APPS = [
    *(_CONTRIB_APPS if PROFILE == "project" else []),
    "benchapp.apps.BenchConfig",
]
MIDDLEWARE = _MIDDLEWARE[PROFILE]
DATABASES: dict[str, object] = {}
USE_TZ = True
WSGI_APPLICATION = "benchapp.wsgi.application"
#: 127.0.0.1 port of the redis-server started by the benchmark (profile redis).
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
# The redis scenario's stock runs answer 500 by design; keep stderr readable.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"django.request": {"level": "CRITICAL"}},
}
