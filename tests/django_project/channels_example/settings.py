"""Settings of the channels_redis example (see the package docstring)."""

from __future__ import annotations

import os

ADAPTER = os.environ.get("LOOPSHARE_ADAPTER", "1") == "1"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

SECRET_KEY = "asgiref-loopshare-channels-example-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS: list[str] = []
if ADAPTER:
    # The one line that turns the adapter on.
    INSTALLED_APPS.append("asgiref_loopshare.django")

MIDDLEWARE: list[str] = []
ROOT_URLCONF = "channels_example.urls"
WSGI_APPLICATION = "channels_example.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
    },
    "pubsub": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["console"], "level": "ERROR"}},
}
