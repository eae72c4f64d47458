#!/usr/bin/env python3
"""The project's test command: ``python tests/run.py``.

Bootstraps everything it needs on a machine with only Python and pip (and root
for apt), using the standard library alone, because it runs before any venv
exists. Everything it downloads or builds lives under
``~/.cache/asgiref-loopshare`` (venvs, sdists, logs; ``ASGIREF_LOOPSHARE_CACHE``
moves it) and ``~/.cache/pip``; nothing is written into the repository. Runs
sharing the cache lock each venv, so concurrent runs wait rather than collide.

Cells (``--list`` shows them):

- ``py<X>-asgiref<V>``: 17 cells, asgiref 3.10.0 / 3.11.1 / 3.12.1 / 3.13.0 on
  every Python 3.9-3.13 that release supports. Each runs (a) our own tests
  (``tests/`` minus ``tests/django*``, ``tests/flask`` and tests marked
  ``django``) and (b) asgiref's own, unchanged test suite from its sdist, with
  ``asgiref_loopshare.install()`` active through ``tests/asgiref_suite_plugin.py``.
- ``lint-py3.12``: ruff check, ruff format --check (only when pyproject.toml
  has ``[tool.ruff.format]``) and mypy --strict asgiref_loopshare.
- ``django<S>-py<X>-asgiref<V>``: our ``tests/django*`` and ``tests/flask``
  tests (and tests marked ``django``) against Django 4.2 / latest 5.2.x /
  latest 6.1.x, with Flask, gunicorn, waitress, redis-py and redis-server;
  the 6.1 cells also with django-async-backend, psycopg and PostgreSQL
  (``tests/django/test_async_backend.py``) and with psycopg-pool, asyncpg,
  httpx and aiohttp (``tests/django/test_real_clients.py``), and with channels
  and channels-redis (``tests/django/test_channels_redis.py``).
- ``django-suite<S>-py<X>-asgiref<V>``: Django's own test suite for the
  request-path modules, with ``asgiref_loopshare.django.install()`` active
  (``tests/django_suite.py``). Failures listed in `DJANGO_KNOWN_FAILURES`
  happen without our patch too (``--django-baseline`` shows them) and do not
  fail the run.

The Django cells are enabled once ``asgiref_loopshare/django/__init__.py``
exists. A cell whose interpreter is missing prints a SKIPPED line and is counted.

How results count:

- a required test run that ran no test (pytest exit 5, Django "Ran 0 tests")
  is a failure: our own non-Django tests, asgiref's suite, Django's suite, and
  our framework tests taken together in a Django cell. The one optional
  selection is the ``-m django`` pass over the other tests: it may be empty.
- each lint check counts as one test.
- a step that breaks without test counts (a venv that will not build, a
  crash, a timeout) counts as one failed test, so the closing line never says
  "0 failed" for a red run.

The last line printed is ``N passed, N failed, N skipped`` (tests summed over
all cells); the exit status is non-zero if any cell failed.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import dataclasses
import email.parser
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import IO

from _sdists import (
    DJANGO_MODULES,
    DJANGO_MODULES_6,
    SdistError,
    extract_all,
    junit_outcomes,
    pip_download_command,
    single_child,
)

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
CACHE = Path(
    os.environ.get("ASGIREF_LOOPSHARE_CACHE", "~/.cache/asgiref-loopshare")
).expanduser()
VENVS = CACHE / "venvs"
SDISTS = CACHE / "sdists"
LOGS = CACHE / "logs"
BUILD = CACHE / "build"

PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
PYENV_GLOBS = (
    "/root/.pyenv/versions/*/bin/python",
    os.path.expanduser("~/.pyenv/versions/*/bin/python"),
    os.path.join(os.environ.get("PYENV_ROOT", "/nonexistent"), "versions/*/bin/python"),
)

#: asgiref release -> oldest Python it supports (its setup.cfg python_requires;
#: checked against the sdist when a cell runs).
ASGIREF_MIN_PYTHON = {
    "3.10.0": "3.9",
    "3.11.1": "3.9",
    "3.12.1": "3.10",
    "3.13.0": "3.11",
}
LATEST_ASGIREF = "3.13.0"
LINT_PYTHON = "3.12"
QUICK_CELLS = ("lint-py3.12", "py3.12-asgiref3.13.0")

#: Django series -> requirement that picks its latest release.
DJANGO_SERIES = {
    "4.2": "Django>=4.2,<4.3",
    "5.2": "Django>=5.2,<5.3",
    "6.1": "Django>=6.1,<6.2",
}
DJANGO_CELLS = (
    ("4.2", "3.9"),
    ("4.2", "3.12"),
    ("5.2", "3.10"),
    ("5.2", "3.13"),
    ("6.1", "3.12"),
    ("6.1", "3.13"),
)
DJANGO_SUITE_CELLS = (("5.2", "3.12"), ("6.1", "3.13"))
#: Packages the Django cells' tests need beyond Django and our [test] extra.
#: Flask: those cells also run tests/flask (the same servers and redis).
DJANGO_CELL_PACKAGES = ("redis>=5", "gunicorn", "waitress", "flask")
#: Django series -> more packages for its cells. django-async-backend (issue
#: #20) tracks Django's feature release (6.1.x needs Django 6.1) and needs
#: Python 3.12+, as the 6.1 cells have; its tests start a PostgreSQL server
#: (Debian's postgresql, see `ensure_postgresql`). psycopg-pool, asyncpg,
#: httpx and aiohttp: the loop-bound clients of tests/django/test_real_clients.py
#: (issue #21), on the same PostgreSQL, redis-server and a local HTTP server.
#: channels and channels-redis: tests/django/test_channels_redis.py (issue #21),
#: pinned to the channels_redis release whose spawned tasks it exercises.
DJANGO_SERIES_PACKAGES: dict[str, tuple[str, ...]] = {
    "6.1": (
        "django-async-backend==6.1.5",
        "psycopg[binary]>=3.1",
        "psycopg-pool>=3.3",
        "asyncpg",
        "httpx",
        "aiohttp",
        "channels",
        "channels-redis==4.3.0",
    ),
}
#: Test directories that need a web framework: run in the Django cells only.
FRAMEWORK_TEST_GLOBS = ("django*", "flask")
#: Django's own test modules on the request path, plus the 6.x tasks framework
#: (shared with upstream/check.py).
DJANGO_SUITE_MODULES = DJANGO_MODULES
DJANGO_SUITE_MODULES_6 = DJANGO_MODULES_6
#: What tests/requirements/py3.txt lists that these modules use; found by
#: running them with -v 2 and reading the skip reasons. Django itself brings
#: asgiref and sqlparse; tblib lets --parallel report tracebacks; jinja2 runs
#: generic_views' template-engine test. Pillow, selenium, redis, etc. are not
#: needed (the selenium tests skip: "No browsers specified").
DJANGO_SUITE_PACKAGES = ("tblib", "jinja2")
#: Failures of Django's own suite that happen WITHOUT asgiref_loopshare too, so
#: they are Django's or this machine's, not ours. Series -> test id -> evidence
#: (run ``python tests/run.py --django-baseline`` to refresh). Only failures not
#: listed here fail a django-suite cell.
DJANGO_KNOWN_FAILURES: dict[str, dict[str, str]] = {
    # --django-baseline, Nov 2026: 5.2.19 on Python 3.12.1 ran 1530 tests, OK
    # (skipped=5); patched, the same.
    "5.2": {},
    # --django-baseline, Nov 2026: 6.1.3 on Python 3.13.0 ran 1730 tests, OK
    # (skipped=6); patched, the same.
    "6.1": {},
}

VENV_LAYOUT = 1  # bump to rebuild every venv
STEP_TIMEOUT = 25 * 60  # seconds; a hang shows as a failed cell, not a dead CI
TEST_TIMEOUT_PER_TEST = 300  # pytest-timeout guard for asgiref's suite (hangs)
TAIL_LINES = 80

_print_lock = threading.Lock()
_live: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()


def say(*lines: str) -> None:
    with _print_lock:
        for line in lines:
            print(line, flush=True)


# --------------------------------------------------------------------------- cells


@dataclasses.dataclass(frozen=True)
class Cell:
    name: str
    kind: str  # "matrix" | "lint" | "django" | "django-suite"
    python: str
    asgiref: str
    django: str | None = None  # series, e.g. "5.2"

    @property
    def needs_adapter(self) -> bool:
        return self.kind in ("django", "django-suite")


def all_cells() -> list[Cell]:
    cells = [Cell("lint-py3.12", "lint", LINT_PYTHON, LATEST_ASGIREF)]
    for version, oldest in ASGIREF_MIN_PYTHON.items():
        for py in PYTHONS:
            if _vtuple(py) >= _vtuple(oldest):
                cells.append(Cell(f"py{py}-asgiref{version}", "matrix", py, version))
    for series, py in DJANGO_CELLS:
        asg = asgiref_for_django(py)
        cells.append(
            Cell(f"django{series}-py{py}-asgiref{asg}", "django", py, asg, series)
        )
    for series, py in DJANGO_SUITE_CELLS:
        asg = asgiref_for_django(py)
        name = f"django-suite{series}-py{py}-asgiref{asg}"
        cells.append(Cell(name, "django-suite", py, asg, series))
    return cells


def asgiref_for_django(python: str) -> str:
    # asgiref 3.13 needs Python 3.11+; 3.11.1 is the newest for 3.9/3.10.
    return "3.11.1" if _vtuple(python) < (3, 11) else LATEST_ASGIREF


def _vtuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def adapter_present() -> bool:
    return (REPO / "asgiref_loopshare" / "django" / "__init__.py").is_file()


# --------------------------------------------------------------------- interpreters


@dataclasses.dataclass(frozen=True)
class Interpreter:
    path: str
    version: str  # full, e.g. "3.12.1"


def discover_pythons() -> dict[str, Interpreter]:
    """``"3.X"`` -> newest interpreter found (pyenv, then PATH, then this one)."""
    candidates: list[str] = []
    for pattern in PYENV_GLOBS:
        candidates += sorted(glob.glob(pattern))
    for py in PYTHONS:
        found = shutil.which(f"python{py}")
        if found:
            candidates.append(found)
    candidates.append(sys.executable)
    found_by_minor: dict[str, Interpreter] = {}
    seen: set[str] = set()
    for path in candidates:
        real = os.path.realpath(path)
        if real in seen or not os.access(real, os.X_OK):
            continue
        seen.add(real)
        try:
            out = subprocess.run(
                [path, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        minor = ".".join(out.split(".")[:2])
        if minor not in PYTHONS:
            continue
        best = found_by_minor.get(minor)
        if best is None or _vtuple(out) > _vtuple(best.version):
            found_by_minor[minor] = Interpreter(path, out)
    return found_by_minor


# ---------------------------------------------------------------------- processes


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP")
    }
    env.update(
        PYTHONPYCACHEPREFIX=str(CACHE / "pycache"),  # no __pycache__ in the repo
        PYTHONUNBUFFERED="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        RUFF_CACHE_DIR=str(CACHE / "ruff-cache"),
        DEBIAN_FRONTEND="noninteractive",
    )
    env.setdefault("PIP_CACHE_DIR", os.path.expanduser("~/.cache/pip"))
    if extra:
        env.update(extra)
    return env


def run_logged(
    args: Sequence[str],
    log: IO[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = STEP_TIMEOUT,
) -> int:
    """Run *args* with output appended to *log*; its exit status (124 on timeout)."""
    log.write(f"\n$ {' '.join(args)}" + (f"    (cwd {cwd})" if cwd else "") + "\n")
    log.flush()
    proc = subprocess.Popen(
        list(args),
        cwd=cwd,
        env=env if env is not None else clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so a timeout ends it all
    )
    with _live_lock:
        _live.add(proc)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.wait()
        log.write(f"\n!!! TIMEOUT after {timeout:.0f}s: {' '.join(args)}\n")
        return 124
    finally:
        with _live_lock:
            _live.discard(proc)
        log.flush()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def kill_live() -> None:
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        _kill_group(proc)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock between runs of this harness sharing one cache (several
    developers on one machine): a second run waits instead of reinstalling
    into a venv the first is testing in."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def capture(args: Sequence[str], *, timeout: float = 600) -> tuple[int, str]:
    proc = subprocess.run(
        list(args),
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


# -------------------------------------------------------------------------- sdists


class SetupError(Exception):
    """The run cannot start (no network for a download, no redis-server...)."""


def _extract(tarball: Path) -> Path:
    """Extract an sdist next to itself once; the directory it contains."""
    dest = SDISTS / tarball.name[: -len(".tar.gz")]
    if (dest / ".extracted").is_file():
        return single_child(dest)
    shutil.rmtree(dest, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=SDISTS, prefix=".extract-"))
    extract_all(tarball, tmp)
    (tmp / ".extracted").write_text(tarball.name + "\n")
    os.replace(tmp, dest)
    return single_child(dest)


def _pip_download(python: str, requirement: str) -> Path:
    """``pip download --no-deps --no-binary :all: REQ`` into SDISTS; the file."""
    code, out = capture(pip_download_command(python, requirement, SDISTS))
    names: list[str] = re.findall(r"([\w.\-]+-[0-9][\w.]*\.tar\.gz)", out)
    if code != 0 or not names:
        raise SetupError(f"pip download {requirement} failed:\n{out[-3000:]}")
    path = SDISTS / names[-1]
    if not path.is_file():
        raise SetupError(f"pip download {requirement}: {path} not found:\n{out}")
    return path


@dataclasses.dataclass
class Sdist:
    tarball: Path
    root: Path  # extracted directory
    version: str
    sha256: str


def _sdist(tarball: Path, version: str) -> Sdist:
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    return Sdist(tarball, _extract(tarball), version, digest)


def fetch_asgiref(version: str, python: str) -> Sdist:
    tarball = SDISTS / f"asgiref-{version}.tar.gz"
    if not tarball.is_file():  # pinned releases never change: no network if cached
        tarball = _pip_download(python, f"asgiref=={version}")
    return _sdist(tarball, version)


def fetch_django(series: str, python: str) -> tuple[Sdist, str]:
    """Latest release of *series* as PyPI offers it to *python*; plus a note."""
    note = ""
    try:
        tarball = _pip_download(python, DJANGO_SERIES[series])
    except SetupError as exc:
        cached = sorted(
            SDISTS.glob(f"[dD]jango-{series}*.tar.gz"),
            key=lambda p: _vtuple(p.name),
        )
        if not cached:
            raise
        tarball = cached[-1]
        note = f"could not ask PyPI for the latest Django {series} ({exc}); "
        note += f"using cached {tarball.name}"
    match = re.match(r"[dD]jango-([0-9][0-9a-z.]*)\.tar\.gz$", tarball.name)
    if not match:
        raise SetupError(f"cannot read a version from {tarball.name}")
    return _sdist(tarball, match.group(1)), note


def _setup_cfg(sdist: Sdist) -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(sdist.root / "setup.cfg")
    return cfg


def asgiref_test_extras(sdist: Sdist) -> list[str]:
    raw = _setup_cfg(sdist).get("options.extras_require", "tests", fallback="")
    return [line.strip() for line in raw.splitlines() if line.strip()]


def asgiref_python_requires(sdist: Sdist) -> str:
    return _setup_cfg(sdist).get("options", "python_requires", fallback="")


# ------------------------------------------------------------------- our own wheel


@dataclasses.dataclass
class Project:
    wheel: Path
    requires: list[str]  # Requires-Dist lines, for venv stamps


def build_project(workdir: Path) -> Project:
    """Build our wheel from a copy of the work tree (a build in place would
    leave build/ and *.egg-info in the repo). Uncommitted changes are included."""
    src = workdir / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git", "__pycache__", "*.egg-info", "build", "dist", ".venv*", ".*cache"
        ),
    )
    out = workdir / "wheel"
    code, text = capture(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(src)]
    )
    wheels = list(out.glob("*.whl"))
    if code != 0 or len(wheels) != 1:
        raise SetupError(f"building our wheel failed:\n{text[-3000:]}")
    with zipfile.ZipFile(wheels[0]) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(zf.read(meta_name).decode())
    return Project(wheels[0], sorted(meta.get_all("Requires-Dist") or []))


# ------------------------------------------------- redis-server and PostgreSQL

_apt_updated = False  # apt-get update runs once per run, before the first install


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def apt_get_install(package: str) -> Path:
    """``apt-get install`` *package* (``apt-get update`` first, once); its log."""
    global _apt_updated
    log_path = LOGS / f"apt-{package}.log"
    commands = [] if _apt_updated else [["apt-get", "update"]]
    commands.append(["apt-get", "install", "-y", "--no-install-recommends", package])
    with log_path.open("w") as log:
        for args in commands:
            if run_logged(args, log, timeout=15 * 60) != 0:
                raise SetupError(f"{' '.join(args)} failed; see {log_path}")
            _apt_updated = _apt_updated or args[1] == "update"
    return log_path


def ensure_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return f"redis-server: {found}"
    if not _is_root():
        raise SetupError(
            "the Django cells need a redis-server binary (the tests start it) and "
            "this is not root, so it cannot be installed here: run "
            "`sudo apt-get install -y redis-server`, or pass --no-django"
        )
    log_path = apt_get_install("redis-server")
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if not found:
        raise SetupError(f"redis-server still missing after apt-get; see {log_path}")
    return f"redis-server: installed {found} with apt-get"


def postgres_bin_dir() -> str | None:
    """Where ``postgres`` and ``initdb`` are: PATH, else the newest
    ``/usr/lib/postgresql/<major>/bin`` (Debian puts neither on PATH). The
    tests look the same way (``tests/django/servers.py``)."""
    found = shutil.which("postgres")
    candidates = [os.path.dirname(os.path.realpath(found))] if found else []
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=_vtuple, reverse=True
    )
    for directory in candidates:
        if all(
            os.access(os.path.join(directory, name), os.X_OK)
            for name in ("postgres", "initdb")
        ):
            return directory
    return None


def ensure_postgresql() -> str:
    """PostgreSQL's server binaries for ``tests/django/test_async_backend.py``
    (Django 6.1 cells), which starts its own server with them. Without them
    and without root those tests skip (outside CI) rather than the whole run."""
    found = postgres_bin_dir()
    if found:
        return f"postgresql: {found}"
    if not _is_root():
        return (
            "postgresql: not found and not root, so not installed: the "
            "django-async-backend tests will skip (`sudo apt-get install -y "
            "postgresql` runs them)"
        )
    log_path = apt_get_install("postgresql")
    found = postgres_bin_dir()
    if not found:
        raise SetupError(f"postgres/initdb still missing after apt-get; see {log_path}")
    return f"postgresql: installed {found} with apt-get"


# ------------------------------------------------------------------------- results


@dataclasses.dataclass
class Counts:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)

    def add(self, other: Counts) -> None:
        self.passed += other.passed
        self.failed += other.failed
        self.skipped += other.skipped
        self.failures += other.failures

    @property
    def ran(self) -> int:
        return self.passed + self.failed

    def cell_text(self) -> str:
        return f"{self.passed}/{self.failed}/{self.skipped}"


@dataclasses.dataclass
class CellResult:
    cell: Cell
    log: Path
    ok: bool = True
    ours: Counts | None = None
    suite: Counts | None = None
    duration: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)

    def fail(self, note: str) -> None:
        self.ok = False
        self.notes.append(note)

    def totals(self) -> Counts:
        total = Counts()
        for counts in (self.ours, self.suite):
            if counts is not None:
                total.add(counts)
        return total


def junit_counts(path: Path) -> Counts | None:
    outcomes = junit_outcomes(path, "::")
    return None if outcomes is None else Counts(*outcomes)


_RAN = re.compile(r"^Ran (\d+) tests? in ", re.M)
_STATUS = re.compile(r"^(OK|FAILED)(?: \((.*)\))?\s*$", re.M)
_FAILED_ID = re.compile(r"^(?:FAIL|ERROR|UNEXPECTED SUCCESS): \S+ \(([^)]*)\)", re.M)


def unittest_counts(text: str) -> Counts | None:
    """Counts from a unittest run's closing lines (Django's runtests.py)."""
    ran = _RAN.findall(text)
    status = _STATUS.findall(text)
    if not ran or not status:
        return None
    fields: dict[str, int] = {}
    for item in (status[-1][1] or "").split(","):
        if "=" in item:
            key, value = item.split("=", 1)
            fields[key.strip()] = int(value)
    failed = (
        fields.get("failures", 0)
        + fields.get("errors", 0)
        + fields.get("unexpected successes", 0)
    )
    skipped = fields.get("skipped", 0) + fields.get("expected failures", 0)
    total = int(ran[-1])
    failures = list(dict.fromkeys(_FAILED_ID.findall(text)))
    return Counts(total - failed - skipped, failed, skipped, failures)


# ---------------------------------------------------------------------- cell runs


@dataclasses.dataclass
class Context:
    pythons: dict[str, Interpreter]
    asgiref: dict[str, Sdist]
    django: dict[str, Sdist]
    project: Project
    baseline: bool


class CellRunner:
    def __init__(self, cell: Cell, ctx: Context, log: IO[str]) -> None:
        self.cell = cell
        self.ctx = ctx
        self.log = log
        self.interp = ctx.pythons[cell.python]
        self.venv = VENVS / cell.name
        self.vpy = str(self.venv / "bin" / "python")
        self.result = CellResult(cell, LOGS / f"{cell.name}.log")

    # -- venv --------------------------------------------------------------

    def requirement_steps(self) -> list[list[str]]:
        """``pip install`` argument lists that make this cell's venv."""
        cell, asg = self.cell, self.ctx.asgiref[self.cell.asgiref]
        wheel = str(self.ctx.project.wheel)
        pin = f"asgiref=={cell.asgiref}"
        # asgiref goes in from its sdist first, so the installed copy matches
        # the tests/ shipped beside it; later steps keep it through the pin.
        steps = [[str(asg.tarball)]]
        if cell.kind == "lint":
            steps.append([f"{wheel}[lint]", pin])
        elif cell.kind == "matrix":
            extra = ["typing_extensions"] if cell.python == "3.9" else []
            steps.append([f"{wheel}[test]", pin, *asgiref_test_extras(asg), *extra])
        elif cell.kind == "django":
            assert cell.django is not None
            dj = f"Django=={self.ctx.django[cell.django].version}"
            more = DJANGO_SERIES_PACKAGES.get(cell.django, ())
            steps.append(
                [f"{wheel}[test,django]", pin, dj, *DJANGO_CELL_PACKAGES, *more]
            )
        else:
            assert cell.django is not None
            django_sdist = self.ctx.django[cell.django]
            steps.append(
                [str(django_sdist.tarball), wheel, pin, *DJANGO_SUITE_PACKAGES]
            )
        return steps

    def stamp(self) -> str:
        cell = self.cell
        wheel = str(self.ctx.project.wheel)
        steps = [
            [a.replace(wheel, "<project>") for a in step]
            for step in self.requirement_steps()
        ]
        data = {
            "layout": VENV_LAYOUT,
            "python": [os.path.realpath(self.interp.path), self.interp.version],
            "steps": steps[1:],
            "asgiref": self.ctx.asgiref[cell.asgiref].sha256,
            "django": self.ctx.django[cell.django].sha256 if cell.django else None,
            "project_requires": self.ctx.project.requires,
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def ensure_venv(self) -> bool:
        stamp_file = self.venv / ".asgiref-loopshare-stamp"
        stamp = self.stamp()
        if (
            stamp_file.is_file()
            and stamp_file.read_text().strip() == stamp
            and os.path.exists(self.vpy)
        ):
            self.log.write(f"reusing venv {self.venv} (stamp {stamp[:12]})\n")
        else:
            shutil.rmtree(self.venv, ignore_errors=True)
            if run_logged([self.interp.path, "-m", "venv", str(self.venv)], self.log):
                self.result.fail("could not create the venv")
                return False
            for step in self.requirement_steps():
                if run_logged([self.vpy, "-m", "pip", "install", *step], self.log):
                    self.result.fail("pip install failed (venv)")
                    return False
            stamp_file.write_text(stamp + "\n")
        # Our code changes between runs; the venv does not.
        code = run_logged(
            [
                self.vpy,
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--force-reinstall",
                str(self.ctx.project.wheel),
            ],
            self.log,
        )
        if code:
            self.result.fail("pip install of our wheel failed")
            return False
        run_logged([self.vpy, "-m", "pip", "freeze", "--all"], self.log)
        return True

    # -- pytest ------------------------------------------------------------

    def pytest(
        self,
        label: str,
        args: Sequence[str],
        *,
        cwd: Path,
        required: bool,
        env: dict[str, str] | None = None,
        program: Sequence[str] | None = None,
    ) -> Counts:
        """One pytest run; required=False makes "no tests collected" fine."""
        xml = LOGS / f"{self.cell.name}.{label}.xml"
        xml.unlink(missing_ok=True)
        cmd = [
            *(program or [self.vpy, "-m", "pytest"]),
            "-p",
            "no:cacheprovider",
            "-rfE",
            f"--junitxml={xml}",
            *args,
        ]
        code = run_logged(cmd, self.log, cwd=cwd, env=env or clean_env())
        counts = junit_counts(xml) or Counts()
        if code == 5:
            if required:
                self.result.fail(f"{label}: pytest ran no test (exit 5)")
                counts.failed += 1
        elif code == 124:
            self.result.fail(f"{label}: timed out")
            counts.failed += 1
        elif code != 0:
            self.result.fail(f"{label}: pytest exit {code}")
            if counts.failed == 0:  # crash, usage error, interrupted...
                counts.failed += 1
        return counts

    # -- the kinds of cell ---------------------------------------------------

    def run(self) -> CellResult:
        cell = self.cell
        self.log.write(
            f"cell {cell.name}\npython {self.interp.path} ({self.interp.version})\n"
        )
        if not self.ensure_venv():
            self.result.ours = Counts(failed=1)
            return self.result
        if cell.kind == "lint":
            self.result.ours = self.lint()
        elif cell.kind == "matrix":
            self.result.ours = self.our_tests()
            self.result.suite = self.asgiref_suite()
        elif cell.kind == "django":
            self.result.ours = self.our_framework_tests()
        else:
            self.result.suite = self.django_suite()
        return self.result

    def framework_paths(self) -> list[Path]:
        return sorted(
            p
            for pattern in FRAMEWORK_TEST_GLOBS
            for p in TESTS.glob(pattern)
            if p.name != "django_suite.py"
        )

    def not_framework_args(self) -> list[str]:
        return [f"--ignore={p}" for p in self.framework_paths()]

    def our_tests(self) -> Counts:
        return self.pytest(
            "ours",
            ["-m", "not django", *self.not_framework_args(), "tests"],
            cwd=REPO,
            required=True,
        )

    def our_framework_tests(self) -> Counts:
        paths = [str(p.relative_to(REPO)) for p in self.framework_paths()]
        counts = Counts()
        if paths:
            counts.add(self.pytest("ours-web", paths, cwd=REPO, required=False))
        # Optional selection: tests elsewhere that are marked to need Django.
        counts.add(
            self.pytest(
                "ours-django-marked",
                ["-m", "django", *self.not_framework_args(), "tests"],
                cwd=REPO,
                required=False,
            )
        )
        if counts.ran == 0 and self.result.ok:
            self.result.fail(
                "no Django test ran (tests/django* or @pytest.mark.django) although "
                "asgiref_loopshare/django exists"
            )
            counts.failed += 1
        return counts

    def asgiref_suite(self) -> Counts:
        sdist = self.ctx.asgiref[self.cell.asgiref]
        requires = asgiref_python_requires(sdist)
        oldest = ASGIREF_MIN_PYTHON[self.cell.asgiref]
        if requires.replace(" ", "") != f">={oldest}":
            self.result.fail(
                f"asgiref {sdist.version} says python_requires {requires!r}; "
                f"the matrix assumes >={oldest}: fix ASGIREF_MIN_PYTHON"
            )
        env = clean_env(
            {
                "PYTHONPATH": str(TESTS),  # for -p asgiref_suite_plugin
                "ASGIREF_SUITE_EXPECT_PREFIX": str(self.venv),
            }
        )
        # The venv's pytest script rather than `python -m pytest`: -m would put
        # the sdist directory first on sys.path, and the tests would import (and
        # we would patch) the sdist's asgiref/ source tree instead of the copy
        # installed from that same sdist. The plugin checks which one it patched.
        return self.pytest(
            "asgiref-suite",
            [
                "-p",
                "asgiref_suite_plugin",
                "-o",
                f"timeout={TEST_TIMEOUT_PER_TEST}",
                "tests",
            ],
            cwd=sdist.root,
            required=True,
            env=env,
            program=[self.vpy, str(self.venv / "bin" / "pytest")],
        )

    def lint(self) -> Counts:
        counts = Counts()
        checks: list[tuple[str, list[str]]] = [
            ("ruff check", [self.vpy, "-m", "ruff", "check", "."]),
        ]
        if "[tool.ruff.format]" in (REPO / "pyproject.toml").read_text():
            checks.append(
                ("ruff format", [self.vpy, "-m", "ruff", "format", "--check", "."])
            )
        else:
            self.result.notes.append(
                "ruff format --check not run: pyproject.toml has no [tool.ruff.format]"
            )
        checks.append(
            (
                "mypy",
                [
                    self.vpy,
                    "-m",
                    "mypy",
                    "--cache-dir",
                    str(CACHE / "mypy-cache"),
                    "--strict",
                    "asgiref_loopshare",
                ],
            )
        )
        for label, args in checks:
            if run_logged(args, self.log, cwd=REPO) == 0:
                counts.passed += 1
            else:
                counts.failed += 1
                counts.failures.append(label)
                self.result.fail(f"{label} failed")
        return counts

    def django_suite(self) -> Counts:
        cell = self.cell
        assert cell.django is not None
        sdist = self.ctx.django[cell.django]
        modules = list(DJANGO_SUITE_MODULES)
        if _vtuple(sdist.version) >= (6,):
            modules += DJANGO_SUITE_MODULES_6
        env = clean_env(
            {"ASGIREF_LOOPSHARE_DJANGO_BASELINE": "1" if self.ctx.baseline else "0"}
        )
        self.log.flush()
        start = self.result.log.stat().st_size
        code = run_logged(
            [
                self.vpy,
                str(TESTS / "django_suite.py"),
                str(sdist.root / "tests"),
                "--settings=test_sqlite",
                "--parallel",
                "2",
                *modules,
            ],
            self.log,
            cwd=sdist.root / "tests",
            env=env,
        )
        with self.result.log.open("rb") as fh:
            fh.seek(start)
            text = fh.read().decode(errors="replace")
        counts = unittest_counts(text)
        if counts is None:
            self.result.fail(f"Django's suite did not finish (exit {code})")
            return Counts(failed=1)
        if counts.ran == 0:
            self.result.fail("Django's suite ran no test")
            counts.failed += 1
            return counts
        known = {} if self.ctx.baseline else DJANGO_KNOWN_FAILURES.get(cell.django, {})
        hits = [t for t in counts.failures if t in known]
        if hits:
            counts.failed -= len(hits)
            counts.skipped += len(hits)
            counts.failures = [t for t in counts.failures if t not in known]
            self.result.notes.append(
                f"{len(hits)} known Django failure(s), also without the patch: "
                + ", ".join(hits)
            )
        if counts.failed > 0:
            self.result.fail(f"Django's suite: {counts.failed} new failure(s)")
        elif code != 0 and not hits:
            self.result.fail(f"Django's suite exited {code} without failures")
            counts.failed += 1
        return counts


def run_cell(cell: Cell, ctx: Context) -> CellResult:
    log_path = LOGS / f"{cell.name}.log"
    with file_lock(VENVS / f"{cell.name}.lock"):
        start = time.monotonic()  # not counting a wait for another run
        log_path.write_text("")
        # Append mode: our lines and the children's output interleave in order.
        with log_path.open("a") as log:
            runner = CellRunner(cell, ctx, log)
            try:
                result = runner.run()
            except Exception as exc:  # a harness bug must not hide other cells
                result = runner.result
                result.fail(f"harness error: {type(exc).__name__}: {exc}")
                result.ours = result.ours or Counts()
                result.ours.failed += 1
                traceback.print_exc(file=log)
    result.duration = time.monotonic() - start
    return result


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python tests/run.py",
        description="Run the whole test matrix (see the module docstring).",
    )
    parser.add_argument("--cells", metavar="PATTERN", help="regex/substring filter")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="only py3.12 + asgiref 3.13.0, and lint",
    )
    parser.add_argument("--list", action="store_true", help="list the cells and exit")
    parser.add_argument("--jobs", type=int, default=2, help="cells at once (2)")
    parser.add_argument("--no-django", action="store_true", help="no Django cells")
    parser.add_argument(
        "--django-baseline",
        action="store_true",
        help="run only Django's own suite, WITHOUT our patch, to find its own "
        "failures (for DJANGO_KNOWN_FAILURES)",
    )
    return parser.parse_args(argv)


def select_cells(args: argparse.Namespace) -> tuple[list[Cell], list[str]]:
    """The cells to run, and notes on cells left out on purpose."""
    cells = all_cells()
    notes: list[str] = []
    if args.django_baseline:
        cells = [c for c in cells if c.kind == "django-suite"]
    else:
        if args.no_django:
            cells = [c for c in cells if not c.needs_adapter]
        elif not adapter_present():
            off = [c.name for c in cells if c.needs_adapter]
            cells = [c for c in cells if not c.needs_adapter]
            notes.append(
                f"Django cells disabled ({len(off)}): "
                "asgiref_loopshare/django/__init__.py does not exist yet"
            )
    if args.quick:
        cells = [c for c in cells if c.name in QUICK_CELLS]
    if args.cells:
        try:
            pattern = re.compile(args.cells)
            cells = [c for c in cells if pattern.search(c.name)]
        except re.error:
            cells = [c for c in cells if args.cells in c.name]
    return cells, notes


def prepare(
    cells: list[Cell], pythons: dict[str, Interpreter], baseline: bool
) -> tuple[Context, list[str]]:
    """Download and extract the sdists, install redis-server (and PostgreSQL
    for the Django 6.1 cells), build our wheel."""
    notes: list[str] = []
    for directory in (VENVS, SDISTS, LOGS, BUILD):
        directory.mkdir(parents=True, exist_ok=True)
    with file_lock(CACHE / "prepare.lock"):  # one downloader/extractor at a time
        asgiref = {
            v: fetch_asgiref(v, sys.executable)
            for v in sorted({c.asgiref for c in cells})
        }
        django: dict[str, Sdist] = {}
        for series in sorted({c.django for c in cells if c.django}):
            # Ask with the newest Python of its cells: PyPI hides Django 6.x
            # from Pythons it does not support.
            newest = max((c.python for c in cells if c.django == series), key=_vtuple)
            django[series], note = fetch_django(series, pythons[newest].path)
            notes.append(
                f"Django {series}: {django[series].version}"
                + (f" ({note})" if note else "")
            )
        for stale in BUILD.glob("run-*"):  # left by runs that were killed
            if time.time() - stale.stat().st_mtime > 6 * 3600:
                shutil.rmtree(stale, ignore_errors=True)
        workdir = Path(tempfile.mkdtemp(dir=BUILD, prefix="run-"))
        if any(c.kind == "django" for c in cells):
            notes.append(ensure_redis_server())
        if any(c.kind == "django" and c.django == "6.1" for c in cells):
            notes.append(ensure_postgresql())  # django-async-backend's tests
    project = build_project(workdir)
    notes.append(f"our wheel: {project.wheel.name} (from the work tree as it is)")
    return Context(pythons, asgiref, django, project, baseline), notes


def fmt_time(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ["(no log)"]
    return text[-lines:]


def print_table(results: list[CellResult], skipped: list[Cell]) -> None:
    header = ("cell", "ours p/f/s", "suite p/f/s", "time", "result")
    rows = [header]
    for r in results:
        rows.append(
            (
                r.cell.name,
                r.ours.cell_text() if r.ours else "-",
                r.suite.cell_text() if r.suite else "-",
                fmt_time(r.duration),
                "ok" if r.ok else "FAILED",
            )
        )
    for c in skipped:
        rows.append((c.name, "-", "-", "-", "SKIPPED"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for i, row in enumerate(rows):
        say("  ".join(col.ljust(w) for col, w in zip(row, widths)).rstrip())
        if i == 0:
            say("  ".join("-" * w for w in widths))


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    cells, notes = select_cells(args)
    if args.list:
        for cell in cells:
            say(cell.name)
        for note in notes:
            say(f"# {note}")
        return 0
    if not cells:
        say("no cell matches the selection", "0 passed, 1 failed")
        return 2

    say(f"asgiref-loopshare test run: {len(cells)} cell(s), {args.jobs} at a time")
    say(f"cache: {CACHE}")
    if args.django_baseline:
        say("BASELINE: Django's own suite WITHOUT asgiref_loopshare installed")
    pythons = discover_pythons()
    for minor in PYTHONS:
        interp = pythons.get(minor)
        say(
            f"python{minor}: {interp.path} ({interp.version})"
            if interp
            else f"python{minor}: NOT FOUND"
        )
    runnable: list[Cell] = []
    skipped: list[Cell] = []
    for cell in cells:
        if cell.python in pythons:
            runnable.append(cell)
        elif cell.kind == "lint":
            # Lint does not depend on the Python version: run it on this one.
            fallback = f"{sys.version_info[0]}.{sys.version_info[1]}"
            say(
                f"!!! python{cell.python} missing: {cell.name} falls back to "
                f"{sys.executable} (python{fallback})"
            )
            pythons.setdefault(cell.python, Interpreter(sys.executable, fallback))
            runnable.append(cell)
        else:
            skipped.append(cell)
            say(f"SKIPPED {cell.name}: python{cell.python} NOT FOUND on this machine")
    for note in notes:
        say(note)
    try:
        ctx, prep_notes = prepare(runnable, pythons, args.django_baseline)
    except (SetupError, SdistError) as exc:
        say(f"SETUP FAILED: {exc}", "0 passed, 1 failed")
        return 1
    for note in prep_notes:
        say(note)
    say("")

    # Slowest first, so the two workers finish together.
    order = {"django-suite": 0, "django": 1, "matrix": 2, "lint": 3}
    runnable.sort(key=lambda c: (order[c.kind], c.name))
    results: list[CellResult] = []
    pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    try:
        futures = [pool.submit(run_cell, cell, ctx) for cell in runnable]
        for done, future in enumerate(as_completed(futures), 1):
            r = future.result()
            results.append(r)
            totals = r.totals()
            say(
                f"[{done:2d}/{len(runnable)}] {'ok    ' if r.ok else 'FAILED'} "
                f"{r.cell.name}  {totals.passed} passed, {totals.failed} failed, "
                f"{totals.skipped} skipped  ({fmt_time(r.duration)})"
            )
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        kill_live()
        say("interrupted", "0 passed, 1 failed")
        return 130
    finally:
        pool.shutdown(wait=True)
        shutil.rmtree(ctx.project.wheel.parent.parent, ignore_errors=True)

    results.sort(key=lambda r: r.cell.name)
    failed = [r for r in results if not r.ok]
    for r in failed:
        say("", f"==== {r.cell.name} FAILED; tail of {r.log} ====", *tail(r.log))
    say("", "==== results (p/f/s = passed/failed/skipped) ====")
    print_table(results, skipped)
    for r in results:
        for note in r.notes:
            say(f"{r.cell.name}: {note}")
        for counts in (r.ours, r.suite):
            for test_id in (counts.failures if counts else [])[:50]:
                say(f"{r.cell.name}: failed: {test_id}")
    if skipped:
        say(
            f"!!! {len(skipped)} cell(s) SKIPPED for a missing interpreter: "
            + ", ".join(c.name for c in skipped)
        )
    total = Counts()
    for r in results:
        total.add(r.totals())
    elapsed = time.monotonic() - started
    say(
        f"cells: {len(results) - len(failed)} ok, {len(failed)} failed, "
        f"{len(skipped)} skipped; wall time {fmt_time(elapsed)}; logs in {LOGS}"
    )
    say(f"{total.passed} passed, {total.failed} failed, {total.skipped} skipped")
    return 1 if failed or total.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
