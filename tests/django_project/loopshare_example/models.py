from __future__ import annotations

from django.db import models


class Visit(models.Model):  # type: ignore[misc]
    """One row per call of the ORM view."""

    path = models.CharField(max_length=200)
