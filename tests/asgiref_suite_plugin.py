"""pytest plugin: run asgiref's own, unchanged test suite with our patch active.

Used by ``tests/run.py`` from inside an extracted asgiref sdist::

    PYTHONPATH=<repo>/tests pytest -p asgiref_suite_plugin tests

``pytest_configure`` calls ``asgiref_loopshare.install()`` before any test
module is imported, and fails the run at once if the patch did not take. The
report header says which asgiref file was patched. If the environment variable
``ASGIREF_SUITE_EXPECT_PREFIX`` is set, the patched asgiref must live under it
(the harness sets it to the venv, so that the copy installed from the sdist is
tested rather than the sdist's source tree).
"""

from __future__ import annotations

import os

import pytest


def _patched_file() -> str:
    import asgiref.sync

    return os.path.realpath(asgiref.sync.__file__ or "")


def pytest_configure(config: pytest.Config) -> None:
    import asgiref

    import asgiref_loopshare

    asgiref_loopshare.install()
    if not asgiref_loopshare.is_installed():
        raise pytest.UsageError(
            "asgiref_loopshare.install() ran but is_installed() is False"
        )
    expected = os.environ.get("ASGIREF_SUITE_EXPECT_PREFIX")
    if expected and not _patched_file().startswith(os.path.realpath(expected)):
        raise pytest.UsageError(
            f"patched asgiref {asgiref.__version__} at {_patched_file()}, "
            f"not under {expected}"
        )


def pytest_report_header(config: pytest.Config) -> list[str]:
    import asgiref

    import asgiref_loopshare

    state = "installed" if asgiref_loopshare.is_installed() else "NOT INSTALLED"
    return [
        f"asgiref-loopshare {asgiref_loopshare.__version__} ({state}) from "
        f"{os.path.dirname(asgiref_loopshare.__file__ or '')}",
        f"patched asgiref {asgiref.__version__}: {_patched_file()}",
    ]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import asgiref_loopshare

    # A test that uninstalled the patch would make the rest of the run stock
    # asgiref, and the run would prove nothing.
    if not asgiref_loopshare.is_installed():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                "asgiref_suite_plugin: asgiref_loopshare was no longer installed "
                "at the end of the session",
                red=True,
            )
