"""Run Django's own test suite with asgiref_loopshare's Django adapter installed.

Usage (``tests/run.py`` does this in the django-suite cells)::

    python tests/django_suite.py <django sdist>/tests [runtests.py arguments...]

It calls ``asgiref_loopshare.django.install()``, checks that it took, then runs
``<django sdist>/tests/runtests.py`` as ``__main__`` with ``sys.argv`` set and
the sdist's tests directory as cwd and ``sys.path[0]``, as
``python runtests.py ...`` would.

``--django-baseline`` (or ``ASGIREF_LOOPSHARE_DJANGO_BASELINE=1``) runs the same
suite without installing anything, to tell Django's own failures from ours.
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import sys
from pathlib import Path

BASELINE_ENV = "ASGIREF_LOOPSHARE_DJANGO_BASELINE"


def install_adapter() -> str:
    import asgiref

    import asgiref_loopshare
    import asgiref_loopshare.django as adapter

    adapter.install()
    is_installed = getattr(adapter, "is_installed", None)
    if is_installed is None:
        raise SystemExit(
            "django_suite: asgiref_loopshare.django has no is_installed(); "
            "cannot check that install() worked"
        )
    if not is_installed():
        raise SystemExit(
            "django_suite: asgiref_loopshare.django.install() did not take"
        )
    return (
        f"asgiref_loopshare {asgiref_loopshare.__version__} Django adapter installed "
        f"({os.path.dirname(adapter.__file__ or '')}); asgiref {asgiref.__version__}"
    )


def main(argv: list[str]) -> None:
    baseline = os.environ.get(BASELINE_ENV, "") not in ("", "0")
    if "--django-baseline" in argv:
        argv = [a for a in argv if a != "--django-baseline"]
        baseline = True
    if not argv:
        raise SystemExit(__doc__)
    tests_dir = Path(argv[0]).resolve()
    runtests = tests_dir / "runtests.py"
    if not runtests.is_file():
        raise SystemExit(f"django_suite: {runtests} does not exist")

    if baseline:
        print("django_suite: BASELINE, asgiref_loopshare NOT installed", flush=True)
    else:
        method = multiprocessing.get_start_method()
        if method != "fork":
            # --parallel workers would start without the patch and the run
            # would test stock Django while reporting success.
            raise SystemExit(
                f"django_suite: multiprocessing start method is {method!r}; the "
                "patch reaches --parallel workers only through fork"
            )
        print(f"django_suite: {install_adapter()}", flush=True)

    os.chdir(tests_dir)
    sys.path[0] = str(tests_dir)  # not our tests/: its modules would shadow Django's
    sys.argv = [str(runtests), *argv[1:]]
    runpy.run_path(str(runtests), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
