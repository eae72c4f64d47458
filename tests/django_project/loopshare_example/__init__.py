"""An example Django project that exercises every way async code runs under WSGI.

Environment variables (all optional):

- ``LOOPSHARE_ADAPTER``: ``"1"`` (default) adds ``"asgiref_loopshare.django"`` to
  ``INSTALLED_APPS``; ``"0"`` serves the same project with stock Django.
- ``LOOPSHARE_PROBES``: ``"1"`` (default) connects the async signal receivers and
  the async middleware that record which loop each piece ran on.
- ``LOOPSHARE_DB``: path of the SQLite database (default: ``db.sqlite3`` here).
- ``LOOPSHARE_FILES``: directory for the file served by ``/file/``.
- ``REDIS_URL``: the Redis server of ``/redis/`` (default ``redis://127.0.0.1:6379/0``).
"""
