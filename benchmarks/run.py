#!/usr/bin/env python3
"""Benchmarks of asgiref-loopshare: ``python benchmarks/run.py``.

On a machine with only Python and pip this first builds its own venv under
``~/.cache/asgiref-loopshare/venvs/bench-<python>`` (pyperf, matplotlib, Django,
redis, gunicorn, asgiref 3.13.0, the client libraries of scenario 6b and this
repository), installs ``redis-server`` and PostgreSQL with apt when missing and
we are root, then re-runs itself in that venv,
runs the scenarios and writes ``benchmarks/RESULTS.md`` and the PNG plots.

    python benchmarks/run.py           # full run (~10 minutes)
    python benchmarks/run.py --smoke   # seconds; writes benchmarks/out/smoke/
    python benchmarks/run.py --scenarios calls redis

Scenarios: calls (1 per call, 2 per context), wsgi (3 WSGI-only Django request),
async (4 K1/K3/K10 Django requests, 4b one server thread over 10,000 of them),
redis (5 redis.asyncio views), gunicorn (6 through a real server),
libraries (6b psycopg_pool, asyncpg, redis.asyncio, httpx, aiohttp and
channels_redis through gunicorn: the acceptance tests' projects, ms per request
against stock). Exits non-zero if any scenario errored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loopbench import bootstrap


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="seconds-long run of every scenario with tiny counts (CI); writes to "
        "benchmarks/out/smoke/ unless --out is given",
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=["calls", "wsgi", "async", "redis", "gunicorn", "libraries"],
        help="run only these scenarios (default: all)",
    )
    parser.add_argument("--out", help="directory for RESULTS.md and the plots")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per comparison")
    parser.add_argument(
        "--python",
        help="interpreter for the venv "
        f"(default: {bootstrap.DEFAULT_PYTHON} if present)",
    )
    parser.add_argument(
        "--no-bootstrap",
        action="store_true",
        help="run with the current interpreter as it is (its packages must be there)",
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    if not args.no_bootstrap and not bootstrap.in_venv():
        # Install Debian packages (needs root) before leaving this interpreter.
        wanted = args.scenarios or ["redis", "libraries"]
        if "redis" in wanted or "libraries" in wanted:
            bootstrap.ensure_redis_server()
        if "libraries" in wanted:
            bootstrap.ensure_postgresql()
        if not args.smoke and (args.scenarios is None or "wsgi" in args.scenarios):
            bootstrap.ensure_valgrind()
        bootstrap.reexec_in_venv(
            [str(Path(__file__).resolve()), *argv],
            args.python or bootstrap.default_python(),
        )
    from loopbench import runner

    command = "python benchmarks/run.py" + ("".join(f" {a}" for a in argv))
    return runner.main(args, command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
