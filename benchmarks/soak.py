#!/usr/bin/env python3
"""Full soak: 10 000 requests per server against the example project, adapter on.

    python benchmarks/soak.py                     # gunicorn and waitress
    python benchmarks/soak.py --servers waitress --requests 2000

Run it with a Python that has Django, redis, gunicorn and waitress (e.g. the
dev venv) and a ``redis-server`` on PATH. The request mix, the figures and how
they are taken are in ``tests/django/soak.py`` (the CI version is
``tests/django/test_soak.py``). Prints one summary per server and a Markdown
table (start / middle / end / delta per metric per server), also written to
``benchmarks/out/soak/SOAK.md``. Exits non-zero if a request failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "django"))

from soak import SOAK_KINDS, soak, table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", nargs="+", choices=SOAK_KINDS, default=SOAK_KINDS)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--time-cap", type=float, default=900.0, help="per server, s")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/soak")
    args = parser.parse_args(argv)

    results = []
    for kind in args.servers:
        result = soak(kind, args.requests, args.clients, args.time_cap, midpoint=True)
        print(result.summary(), flush=True)
        results.append(result)
    text = table(results)
    summaries = "\n\n".join(result.summary() for result in results)
    print()
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "SOAK.md").write_text(
        f"# Soak\n\n```\n{summaries}\n```\n\n{text}\n", encoding="utf-8"
    )
    return 1 if any(result.errors or result.timed_out for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
