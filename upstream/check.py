"""Check the upstream patches against the releases they target.

Run as ``python upstream/check.py`` (standard library only; CI runs it). For each
of asgiref and Django it:

1. downloads the release's sdist with pip into
   ``~/.cache/asgiref-loopshare/upstream/`` (kept there and reused),
2. extracts it to a temporary directory and applies the patch with ``git apply``
   (a patch that does not apply fails the check, loudly),
3. runs the project's tests in a Python 3.12 venv under
   ``~/.cache/asgiref-loopshare/venvs/upstream-*``:

   - asgiref: its whole test suite (pytest) on the patched asgiref;
   - Django: the test modules on the WSGI request path (``tests/runtests.py
     --settings=test_sqlite --parallel 2``) on the patched Django, with the
     patched asgiref installed.

It exits non-zero if a patch does not apply or a test fails, and prints a
closing line ``N passed, N failed``. ``--baseline`` runs the same suites on the
unpatched sdists (with stock asgiref for Django), to tell a failure of the
release itself from one of the patch: see `DJANGO_KNOWN_FAILURES`.

``upstream/asgiref/0002-*.patch`` (the CHANGELOG.txt entry) targets asgiref's
repository: the sdist ships no CHANGELOG.txt, so it is not applied here.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# The Django test modules and the sdist helpers, shared with tests/run.py.
sys.path.append(str(Path(__file__).resolve().parent.parent / "tests"))
import _sdists
from _sdists import SdistError

HERE = Path(__file__).resolve().parent
CACHE = Path.home() / ".cache" / "asgiref-loopshare"
SDISTS = CACHE / "upstream"
VENVS = CACHE / "venvs"

PYTHON_VERSION = "3.12"
#: The releases the patches are made against. When a new release comes out,
#: rebase the patch (regenerate it with ``git format-patch``) and bump these.
ASGIREF_VERSION = "3.13.0"
DJANGO_VERSION = "6.1.3"  # the latest 6.1.x as of Nov 2026
ASGIREF_PATCH = (
    HERE / "asgiref" / "0001-Shared-one-event-loop-per-AsyncSingleThreadContext.patch"
)
DJANGO_PATCH = (
    HERE / "django" / "0001-Fixed-36863-Ran-a-WSGI-request-s-async-code-on-one-e.patch"
)

#: What the suites need besides the project itself (asgiref's "tests" extra;
#: for Django, what tests/requirements/py3.txt lists that these modules use:
#: tblib lets --parallel report tracebacks, jinja2 runs a generic_views test).
ASGIREF_TEST_PACKAGES = ("pytest", "pytest-asyncio", "pytest-timeout", "packaging")
DJANGO_TEST_PACKAGES = ("sqlparse", "tblib", "jinja2")
#: Django's test modules on the request path, and 6.x's tasks framework.
DJANGO_MODULES = (*_sdists.DJANGO_MODULES, *_sdists.DJANGO_MODULES_6)
#: Django tests that fail WITHOUT the patches too (Django's own or this
#: machine's), as "test id" -> evidence. They are reported, not counted.
#: Evidence, Nov 2026: ``python upstream/check.py --baseline`` (stock Django
#: 6.1.3, stock asgiref 3.13.0, Python 3.12.1) ran 1725 tests of these modules:
#: OK (skipped=6). So nothing is listed.
DJANGO_KNOWN_FAILURES: dict[str, str] = {}

SUITE_TIMEOUT = 20 * 60  # seconds; a hang fails the check instead of CI
PER_TEST_TIMEOUT = 300  # pytest-timeout guard for asgiref's suite


class CheckError(Exception):
    """Something the check could not do (download, patch, venv)."""


@dataclass
class Result:
    name: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)
    error: str = ""

    def line(self) -> str:
        text = f"{self.name}: {self.passed} passed, {self.failed} failed, "
        text += f"{self.skipped} skipped"
        if self.known:
            text += f" ({len(self.known)} known failures not counted)"
        if self.error:
            text += f" - {self.error}"
        return text


def say(message: str) -> None:
    print(message, flush=True)


def run(
    command: list[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 15 * 60,
    nice: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run *command*, output captured; never raises for a non-zero exit."""
    say(f"$ {' '.join(command)}" + (f"  (in {cwd})" if cwd else ""))
    # The machine is shared: heavy suites run at a lower priority.
    preexec = (lambda: os.nice(10)) if nice and hasattr(os, "nice") else None
    try:
        return subprocess.run(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=preexec,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout if isinstance(exc.stdout, str) else ""
        return subprocess.CompletedProcess(
            command, -1, output, f"timed out after {timeout}s"
        )


def require_ok(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        raise CheckError(
            f"{what} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )


def find_python() -> str:
    """A Python 3.12 interpreter: this one, pyenv's, or python3.12 on PATH."""
    candidates = [sys.executable]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    pattern = pyenv_root / "versions" / f"{PYTHON_VERSION}*" / "bin" / "python"
    candidates += sorted(glob.glob(str(pattern)), reverse=True)
    candidates.append(shutil.which(f"python{PYTHON_VERSION}") or "")
    probe = "import sys; print('%d.%d' % sys.version_info[:2])"
    for candidate in candidates:
        if not candidate or not Path(candidate).exists():
            continue
        result = subprocess.run(
            [candidate, "-c", probe], capture_output=True, text=True, check=False
        )
        if result.returncode == 0 and result.stdout.strip() == PYTHON_VERSION:
            return candidate
    raise CheckError(f"no Python {PYTHON_VERSION} found (tried {candidates})")


def download_sdist(python: str, name: str, version: str) -> Path:
    """The sdist of name==version, downloaded with pip unless already cached."""
    SDISTS.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(
        rf"{re.escape(name)}-{re.escape(version)}\.tar\.gz", re.IGNORECASE
    )
    for path in SDISTS.iterdir():
        if pattern.fullmatch(path.name):
            say(f"{name} {version}: using {path}")
            return path
    result = run(_sdists.pip_download_command(python, f"{name}=={version}", SDISTS))
    require_ok(result, f"downloading the {name} {version} sdist")
    for path in SDISTS.iterdir():
        if pattern.fullmatch(path.name):
            return path
    raise CheckError(f"pip downloaded no {name}-{version}.tar.gz into {SDISTS}")


def extract(sdist: Path, into: Path) -> Path:
    _sdists.extract_all(sdist, into)
    return _sdists.single_child(into)


def apply_patch(tree: Path, patch: Path) -> None:
    """Apply *patch* to *tree* with git apply; raise if it does not apply."""
    if not patch.is_file():
        raise CheckError(f"patch not found: {patch}")
    # Never let git find a repository above the tree: paths are the tree's.
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(tree.parent))
    for args in (["--check"], []):
        command = ["git", "apply", "--verbose", *args, str(patch)]
        result = run(command, cwd=tree, env=env)
        if result.returncode != 0:
            raise CheckError(
                f"PATCH DOES NOT APPLY: {patch.relative_to(HERE.parent)} to "
                f"{tree.name}\n{result.stdout}{result.stderr}"
            )
    say(f"applied {patch.name} to {tree.name}")


def venv(name: str, python: str, packages: tuple[str, ...]) -> str:
    """The venv's python, creating the venv and installing *packages* once."""
    path = VENVS / name
    vpy = path / "bin" / "python"
    stamp = path / ".upstream-check"
    wanted = hashlib.sha256("\n".join([python, *packages]).encode()).hexdigest()
    if stamp.is_file() and stamp.read_text() == wanted and vpy.exists():
        probe = run([str(vpy), "-c", "import sys; print(sys.version)"])
        if probe.returncode == 0:
            return str(vpy)
    if path.exists():
        shutil.rmtree(path)
    VENVS.mkdir(parents=True, exist_ok=True)
    require_ok(run([python, "-m", "venv", str(path)]), f"creating {path}")
    pip = [str(vpy), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    require_ok(run([*pip, *packages]), f"installing {', '.join(packages)} into {path}")
    stamp.write_text(wanted)
    return str(vpy)


def install_patched_asgiref(vpy: str, tree: Path) -> None:
    pip = [vpy, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    result = run([*pip, "--no-deps", "--force-reinstall", str(tree)])
    require_ok(result, f"installing the patched asgiref into {vpy}")
    # Make sure the suites test the patched code, not some other asgiref.
    probe = run(
        [
            vpy,
            "-c",
            "import asgiref.sync as s; "
            "print(s.__file__, hasattr(s, '_SharedLoopExecutor'))",
        ]
    )
    if probe.returncode != 0 or not probe.stdout.strip().endswith("True"):
        raise CheckError(
            f"the patched asgiref is not the one imported: {probe.stdout}{probe.stderr}"
        )


def install_stock_asgiref(vpy: str) -> None:
    pip = [vpy, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    result = run(
        [*pip, "--force-reinstall", "--no-deps", f"asgiref=={ASGIREF_VERSION}"]
    )
    require_ok(result, f"installing asgiref {ASGIREF_VERSION} into {vpy}")


# ---------------------------------------------------------------- the suites


def asgiref_suite(vpy: str, tree: Path, name: str) -> Result:
    junit = tree / "junit.xml"
    result = run(
        [
            vpy,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--timeout",
            str(PER_TEST_TIMEOUT),
            f"--junitxml={junit}",
            "tests",
        ],
        cwd=tree,
        timeout=SUITE_TIMEOUT,
        nice=True,
    )
    say(tail(result.stdout, 15))
    outcome = Result(name)
    if not junit.is_file():
        outcome.failed = 1
        outcome.error = (
            f"pytest produced no report (exit {result.returncode}): "
            f"{result.stderr[-500:]}"
        )
        return outcome
    outcomes = _sdists.junit_outcomes(junit, ".")
    if outcomes is None:
        outcome.failed = 1
        outcome.error = f"pytest's report {junit} cannot be read"
        return outcome
    outcome.passed, outcome.failed, outcome.skipped, outcome.failures = outcomes
    if result.returncode != 0 and not outcome.failed:
        outcome.failed = 1
        outcome.error = f"pytest exited with {result.returncode}"
    return outcome


_RAN = re.compile(r"^Ran (\d+) tests? in ", re.M)
_STATUS = re.compile(r"^(OK|FAILED)(?: \((.*)\))?\s*$", re.M)
_FAILED_ID = re.compile(r"^(?:FAIL|ERROR|UNEXPECTED SUCCESS): (\S+) \(([^)]*)\)", re.M)


def django_suite(vpy: str, tree: Path, name: str) -> Result:
    env = dict(os.environ)
    # runtests.py imports django: make it the extracted (patched) one.
    env["PYTHONPATH"] = str(tree)
    result = run(
        [
            vpy,
            "runtests.py",
            "--settings=test_sqlite",
            "--parallel",
            "2",
            *DJANGO_MODULES,
        ],
        cwd=tree / "tests",
        env=env,
        timeout=SUITE_TIMEOUT,
        nice=True,
    )
    output = result.stdout + result.stderr
    say(tail(output, 12))
    outcome = Result(name)
    expected_django = f"Django installed in '{tree / 'django'}'"
    if expected_django not in output:
        outcome.failed = 1
        outcome.error = "runtests.py did not test the extracted Django"
        return outcome
    ran, status = _RAN.findall(output), _STATUS.findall(output)
    if not ran or not status:
        outcome.failed = 1
        outcome.error = f"no test summary (exit {result.returncode})"
        return outcome
    fields = {}
    for item in (status[-1][1] or "").split(","):
        if "=" in item:
            key, value = item.split("=", 1)
            fields[key.strip()] = int(value)
    failed = fields.get("failures", 0) + fields.get("errors", 0)
    failed += fields.get("unexpected successes", 0)
    outcome.skipped = fields.get("skipped", 0) + fields.get("expected failures", 0)
    outcome.passed = int(ran[-1]) - failed - outcome.skipped
    for method, where in dict.fromkeys(_FAILED_ID.findall(output)):
        test_id = f"{where}" if where.endswith(method) else f"{where}.{method}"
        if test_id in DJANGO_KNOWN_FAILURES:
            outcome.known.append(test_id)
        else:
            outcome.failures.append(test_id)
    outcome.failed = failed - len(outcome.known)
    if outcome.failed < len(outcome.failures):  # ids seen but not in the counts
        outcome.failed = len(outcome.failures)
    if result.returncode != 0 and not outcome.failed and not outcome.known:
        outcome.failed = 1
        outcome.error = f"runtests.py exited with {result.returncode}"
    return outcome


def tail(text: str, lines: int) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


# ---------------------------------------------------------------- main


def check(baseline: bool) -> list[Result]:
    python = find_python()
    say(f"Python {PYTHON_VERSION}: {python}")
    asgiref_sdist = download_sdist(python, "asgiref", ASGIREF_VERSION)
    django_sdist = download_sdist(python, "Django", DJANGO_VERSION)
    label = "stock" if baseline else "patched"
    results = []
    with tempfile.TemporaryDirectory(prefix="upstream-check-") as tmp:
        asgiref_tree = extract(asgiref_sdist, Path(tmp) / "asgiref")
        django_tree = extract(django_sdist, Path(tmp) / "django")
        if not baseline:
            apply_patch(asgiref_tree, ASGIREF_PATCH)
            apply_patch(django_tree, DJANGO_PATCH)
            say(
                "not applied: upstream/asgiref/0002-*.patch (CHANGELOG.txt, which "
                "the sdist does not ship)"
            )

        vpy = venv("upstream-asgiref", python, ASGIREF_TEST_PACKAGES)
        if baseline:
            install_stock_asgiref(vpy)
        else:
            install_patched_asgiref(vpy, asgiref_tree)
        say(f"\n== asgiref {ASGIREF_VERSION} ({label}): its test suite")
        results.append(
            asgiref_suite(
                vpy, asgiref_tree, f"asgiref {ASGIREF_VERSION} ({label}) test suite"
            )
        )

        vpy = venv("upstream-django", python, DJANGO_TEST_PACKAGES)
        if baseline:
            install_stock_asgiref(vpy)
        else:
            install_patched_asgiref(vpy, asgiref_tree)
        say(
            f"\n== Django {DJANGO_VERSION} ({label}, asgiref {label}): "
            f"{len(DJANGO_MODULES)} test modules"
        )
        results.append(
            django_suite(
                vpy,
                django_tree,
                f"Django {DJANGO_VERSION} ({label}) {len(DJANGO_MODULES)} modules",
            )
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="run the suites on the unpatched releases (evidence for known failures)",
    )
    args = parser.parse_args()
    started = time.monotonic()
    try:
        results = check(args.baseline)
    except (CheckError, SdistError) as exc:
        say(f"\nERROR: {exc}")
        say("0 passed, 1 failed")
        return 1
    say("\n== Summary")
    for result in results:
        say(result.line())
        for test_id in result.failures:
            say(f"    FAILED {test_id}")
        for test_id in result.known:
            say(
                f"    known failure, not counted: {test_id} "
                f"({DJANGO_KNOWN_FAILURES[test_id]})"
            )
    say(f"took {time.monotonic() - started:.0f}s")
    passed = sum(result.passed for result in results)
    failed = sum(result.failed for result in results)
    say(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
