"""What ``tests/run.py`` and ``upstream/check.py`` share: which of Django's own
test modules to run, how an sdist is downloaded and extracted, and how a
pytest JUnit report is counted.

Standard library only: both scripts run under the system Python before any venv
exists. ``tests/run.py`` imports it from its own directory; ``upstream/check.py``
appends ``tests/`` to ``sys.path`` before importing it.
"""

from __future__ import annotations

import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

#: Django's own test modules on the request path (where async_to_sync runs
#: under WSGI).
DJANGO_MODULES = (
    "handlers",
    "wsgi",
    "builtin_server",
    "servers",
    "asgi",
    "async",
    "signals",
    "dispatch",
    "middleware_exceptions",
    "middleware",
    "requests_tests",
    "responses",
    "httpwrappers",
    "test_client",
    "test_client_regress",
    "decorators",
    "view_tests",
    "generic_views",
    "staticfiles_tests",
)
#: Added for Django 6.x: its tasks framework.
DJANGO_MODULES_6 = ("tasks",)


class SdistError(Exception):
    """An sdist that cannot be used (unsafe paths, not one top-level directory)."""


def pip_download_command(python: str, requirement: str, dest: Path) -> list[str]:
    """``pip download`` of *requirement*'s sdist (no wheel, no deps) into *dest*."""
    return [
        python,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "-d",
        str(dest),
        requirement,
    ]


def extract_all(tarball: Path, into: Path) -> None:
    """Extract *tarball* into the directory *into*, refusing unsafe paths."""
    with tarfile.open(tarball) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
        else:  # Python < 3.11.4 / 3.12: sdists from PyPI, paths checked
            for member in tar.getmembers():
                if member.name.startswith("/") or ".." in Path(member.name).parts:
                    raise SdistError(f"unsafe path {member.name!r} in {tarball}")
            tar.extractall(into)


def single_child(directory: Path) -> Path:
    """The one directory in *directory* (an extracted sdist's top level)."""
    dirs = [p for p in directory.iterdir() if p.is_dir()]
    if len(dirs) != 1:
        raise SdistError(f"{directory}: expected one top-level directory, found {dirs}")
    return dirs[0]


def junit_outcomes(
    path: Path, id_separator: str
) -> tuple[int, int, int, list[str]] | None:
    """(passed, failed, skipped, failed test ids) of a pytest ``--junitxml``
    report, or ``None`` if it cannot be read. A test id is the case's
    classname and name joined by *id_separator*."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    passed = failed = skipped = 0
    failures: list[str] = []
    for case in root.iter("testcase"):
        tags = {child.tag for child in case}
        if tags & {"failure", "error"}:
            failed += 1
            failures.append(
                f"{case.get('classname', '')}{id_separator}{case.get('name', '')}"
            )
        elif "skipped" in tags:
            skipped += 1
        else:
            passed += 1
    return passed, failed, skipped, failures
