"""A third example project: channels_redis 4.3 channel layers under WSGI (issue #21).

Views that make one round trip through a channel layer per request — a channel
of their own (``new_channel``), ``group_add`` on a group of their own,
``group_send``, ``receive``, ``group_discard`` — on the core layer
(``channels_redis.core.RedisChannelLayer``, alias ``"default"``) and on the
pub/sub layer (``channels_redis.pubsub.RedisPubSubChannelLayer``, alias
``"pubsub"``), each from a sync view (one ``async_to_sync`` per step) and from
an async view.

Environment variables:

- ``LOOPSHARE_ADAPTER``: ``"1"`` (default) adds ``"asgiref_loopshare.django"`` to
  ``INSTALLED_APPS``; ``"0"`` serves the same project with stock Django.
- ``REDIS_URL``: the Redis both layers use (``redis://127.0.0.1:6379/0``).

Needs Django 6.1, channels and channels-redis (the Django 6.1 cells of
``tests/run.py``); ``tests/django/test_channels_redis.py`` serves it.
"""
