"""Fresh-machine bootstrap: the benchmark venv, ``redis-server``, PostgreSQL and
``valgrind``.

Standard library only: this runs under whatever Python started ``run.py``,
before anything else is installed.

The venv lives under ``~/.cache/asgiref-loopshare/venvs/bench-<major.minor>`` and
is rebuilt only when its requirements (or the repository it points at) change,
so later runs start in a second.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_ROOT = Path.home() / ".cache" / "asgiref-loopshare" / "venvs"
DEFAULT_PYTHON = "/root/.pyenv/versions/3.12.1/bin/python"
#: Set in the environment of the re-executed ``run.py``.
IN_VENV_MARKER = "ASGIREF_LOOPSHARE_BENCH_VENV"
ASGIREF_PIN = "asgiref==3.13.0"


def _version_of(python: str) -> tuple[int, int]:
    out = subprocess.run(
        [python, "-c", "import sys; print(*sys.version_info[:2])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return int(out[0]), int(out[1])


def requirements(version: tuple[int, int]) -> list[str]:
    django = "Django>=6.1,<6.2" if version >= (3, 12) else "Django>=5.2,<5.3"
    return [
        "pyperf",
        "matplotlib",
        django,
        "redis>=5",
        "gunicorn",
        ASGIREF_PIN,
        "setuptools>=64",
        # Scenario 6b (libraries): the clients of tests/django_project/
        # clients_example and channels_example, as tests/run.py's 6.1 cells
        # install them (channels-redis pinned to the release the tests exercise).
        "psycopg[binary]>=3.1",
        "psycopg-pool>=3.3",
        "asyncpg",
        "httpx",
        "aiohttp",
        "channels",
        "channels-redis==4.3.0",
    ]


def default_python() -> str:
    return DEFAULT_PYTHON if os.path.exists(DEFAULT_PYTHON) else sys.executable


def venv_dir(version: tuple[int, int]) -> Path:
    return VENV_ROOT / f"bench-{version[0]}.{version[1]}"


def _log(message: str) -> None:
    print(f"[bootstrap] {message}", file=sys.stderr, flush=True)


def ensure_venv(base_python: str) -> Path:
    """Create or refresh the benchmark venv; return its Python."""
    version = _version_of(base_python)
    venv = venv_dir(version)
    python = venv / "bin" / "python"
    wanted = {"requirements": requirements(version), "repo": str(REPO)}
    stamp = venv / ".bench-stamp.json"
    if python.exists() and stamp.exists():
        try:
            if json.loads(stamp.read_text()) == wanted:
                return python
        except ValueError:
            pass
    if not python.exists():
        _log(f"creating {venv} with {base_python}")
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
    _log("installing " + " ".join(wanted["requirements"]))
    pip = [
        str(python),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]
    subprocess.run([*pip, "--upgrade", *wanted["requirements"]], check=True)
    # The repository itself, editable: the workers also put REPO first on
    # sys.path, so a checkout elsewhere never benchmarks a stale copy.
    subprocess.run(
        [*pip, "--no-deps", "--no-build-isolation", "--editable", str(REPO)],
        check=True,
    )
    stamp.write_text(json.dumps(wanted))
    return python


def ensure_redis_server() -> str | None:
    """Path of ``redis-server``; installed with apt when missing and root."""
    return _ensure_debian_package("redis-server", "redis-server", "redis skipped")


def postgres_bin_dir() -> str | None:
    """Where ``postgres`` and ``initdb`` are, found as the tests find them
    (``tests/django/servers.py``: PATH, else ``/usr/lib/postgresql/<major>/bin``)."""
    sys.path.insert(0, str(REPO))
    try:
        from tests.django import servers
    finally:
        sys.path.remove(str(REPO))
    found = servers.postgres_bin_dir()
    return str(found) if found else None


def ensure_postgresql() -> str | None:
    """PostgreSQL's server binaries (scenario 6b starts its own cluster);
    Debian's ``postgresql`` installed with apt when missing and root, as
    ``tests/run.py`` does."""
    found = postgres_bin_dir()
    if found:
        return found
    _ensure_debian_package(
        "postgres", "postgresql", "the PostgreSQL cases of scenario 6b skipped"
    )
    return postgres_bin_dir()


def ensure_valgrind() -> str | None:
    """Path of ``valgrind`` (instruction counts); installed like redis-server."""
    return _ensure_debian_package(
        "valgrind", "valgrind", "instructions per request not counted"
    )


def _ensure_debian_package(binary: str, package: str, without: str) -> str | None:
    found = shutil.which(binary)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _log(f"{binary} missing and not root (or no apt-get): {without}")
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _log(f"installing {package} with apt-get")
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
        check=False,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return shutil.which(binary) or (
        f"/usr/bin/{binary}" if os.path.exists(f"/usr/bin/{binary}") else None
    )


def reexec_in_venv(argv: list[str], base_python: str) -> None:
    """Replace this process with ``run.py`` under the venv's Python."""
    python = ensure_venv(base_python)
    env = {**os.environ, IN_VENV_MARKER: str(python)}
    os.execve(str(python), [str(python), *argv], env)


def in_venv() -> bool:
    return os.environ.get(IN_VENV_MARKER) == sys.executable or (
        os.environ.get(IN_VENV_MARKER) is not None
        and Path(sys.prefix).resolve().parent == VENV_ROOT.resolve()
    )
