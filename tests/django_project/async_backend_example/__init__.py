"""A second example project: django-async-backend on PostgreSQL under WSGI (issue #20).

One async-only middleware runs a query on a connection of its own
(``async_new_connection``); one async view runs three queries on the request's
connection (``async_connections["default"]``). django-async-backend closes that
connection in its async ``request_finished`` receiver.

Environment variables:

- ``LOOPSHARE_ADAPTER``: ``"1"`` (default) adds ``"asgiref_loopshare.django"`` to
  ``INSTALLED_APPS``; ``"0"`` serves the same project with stock Django.
- ``LOOPSHARE_PG_HOST``, ``LOOPSHARE_PG_PORT``, ``LOOPSHARE_PG_NAME``,
  ``LOOPSHARE_PG_USER``: the PostgreSQL database (trust authentication).

Needs Django 6.1, django-async-backend and psycopg 3 (the Django 6.1 cells of
``tests/run.py``); ``tests/django/test_async_backend.py`` serves it.
"""
