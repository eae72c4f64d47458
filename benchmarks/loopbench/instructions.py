"""Instructions per WSGI-only request, counted by callgrind: no scheduling noise.

CPU time on a shared 2-core machine moves by a few per cent between identical
batches, as much as the adapter's cost on a request that never awaits. An
instruction count does not: it is the same every run for the same process
layout. The layout does move it: CPython's type attribute cache is
direct-mapped and indexed by addresses, so which lookups collide (a miss walks
the MRO) depends on it, and on the version tags that patching classes renumbers.
Optional - it runs only where ``valgrind`` is on PATH (a Debian
package, not a pip one).

Each count is the difference between a run of ``small`` and one of ``large``
requests, divided by the difference, so start-up and warm-up cancel. The
requests run on a non-main thread with the cyclic GC off (no collection lands
in one run and not the other). The stack and heap layout alone moves a
request's count by up to 0.4 % (the sides' difference by 1-2k), so each side
is counted under several environment sizes (which shift that layout) and the
mean is reported; the sides are compared at the same sizes.

Run as ``python -m loopbench.instructions SIDE N PATH`` under valgrind: serves
N requests with the adapter switched on (``loopshare``) or off (``stock``).
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from loopbench.harness import BENCH_DIR, worker_env

#: Lengths of a padding environment variable: four process layouts.
PADS = (1, 40, 90, 170)


def available() -> bool:
    return shutil.which("valgrind") is not None


def _collected(side: str, n: int, pad: int, path: str, profile: str) -> int:
    env = worker_env(
        {"BENCH_PROFILE": profile, "PYTHONHASHSEED": "0", "LOOPBENCH_PAD": "x" * pad}
    )
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "loopbench.instructions",
        side,
        str(n),
        path,
    ]
    done = subprocess.run(
        command, env=env, cwd=BENCH_DIR, capture_output=True, text=True, timeout=900
    )
    match = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"callgrind run failed: {done.stderr[-2000:]}")
    return int(match.group(1))


def per_request(
    sides: tuple[str, ...],
    path: str = "/sync/",
    small: int = 100,
    large: int = 300,
    profile: str = "wsgi",
) -> dict[str, list[float]]:
    """Instructions per request for each side, one figure per layout in `PADS`.

    *profile* is the benchmark project's ``BENCH_PROFILE``.
    """
    jobs = [(side, n, pad) for side in sides for pad in PADS for n in (small, large)]
    with ThreadPoolExecutor(2) as pool:
        counts = dict(
            zip(jobs, pool.map(lambda job: _collected(*job, path, profile), jobs))
        )
    return {
        side: [
            (counts[side, large, pad] - counts[side, small, pad]) / (large - small)
            for pad in PADS
        ]
        for side in sides
    }


def _serve(side: str, n: int, path: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchapp.settings")
    from loopbench.django_workload import DjangoWorkload

    workload = DjangoWorkload({"handler": "toggle", "path": path})

    def serve() -> None:
        workload.prepare(side)
        for _ in range(50):
            workload.request(path)
        gc.disable()
        for _ in range(n):
            workload.request(path)

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join()


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]), sys.argv[3])
