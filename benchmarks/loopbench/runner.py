"""Runs the selected scenarios (inside the benchmark venv) and writes the report."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

from loopbench import bootstrap, harness
from loopbench.report import (
    Section,
    cpu_times,
    machine_info,
    other_load,
    write_results,
)

#: Scenario name -> (module, the section keys it produces, title).
SCENARIOS: dict[str, tuple[str, str]] = {
    "calls": ("loopbench.scenarios.calls:run", "1-2: per call and per context"),
    "wsgi": ("loopbench.scenarios.django_inproc:run_wsgi_only", "3: WSGI-only request"),
    "async": (
        "loopbench.scenarios.django_inproc:run_async",
        "4: K1/K3/K10 requests; 4b: one server thread over 10k",
    ),
    "redis": ("loopbench.scenarios.redis_views:run", "5: redis.asyncio views"),
    "gunicorn": ("loopbench.scenarios.gunicorn_load:run", "6: gunicorn gthread"),
    "libraries": (
        "loopbench.scenarios.libraries:run",
        "6b: real client libraries through gunicorn gthread",
    ),
}


def _entry(spec: str) -> object:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def main(args: argparse.Namespace, command: str) -> int:
    started = time.monotonic()
    if args.smoke:
        out_dir = Path(args.out) if args.out else harness.BENCH_DIR / "out" / "smoke"
    else:
        out_dir = Path(args.out) if args.out else harness.BENCH_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_dir = out_dir if args.smoke or args.out else harness.BENCH_DIR / "out"
    raw_dir.mkdir(parents=True, exist_ok=True)
    config = harness.Config.make(args.smoke, out_dir, raw_dir)
    if args.rounds:
        config.rounds = args.rounds
        config.rounds_given = True
    selected = args.scenarios or list(SCENARIOS)
    if "redis" in selected:
        config.redis_server = bootstrap.ensure_redis_server()
    info = machine_info()
    harness.pin_self(config.other_cpu)
    load_start = cpu_times()

    sections: list[Section] = []
    failed: list[str] = []
    for name in selected:
        spec, title = SCENARIOS[name]
        print(f"[bench] {name}: {title}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            produced = _entry(spec)(config)  # type: ignore[operator]
            sections.extend(produced)
            for section in produced:
                if section.error:
                    failed.append(f"{name}: {section.error}")
        except Exception as exc:
            traceback.print_exc()
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
            sections.append(Section(name, title, error=f"{type(exc).__name__}: {exc}"))
        print(
            f"[bench] {name} done in {time.monotonic() - t0:.1f}s",
            file=sys.stderr,
            flush=True,
        )

    load_cell, load_sentence = other_load(load_start, cpu_times())
    suite = harness.dump_suite(config)
    elapsed = time.monotonic() - started
    results = out_dir / "RESULTS.md"
    write_results(
        results,
        sorted(sections, key=lambda s: s.key),
        info,
        smoke=args.smoke,
        command=command,
        elapsed=elapsed,
        load=load_sentence,
        extra={
            "worker CPU / other CPU": f"{config.worker_cpu} / {config.other_cpu}",
            "other load during the run": load_cell,
            "rounds x processes per mode": f"{config.rounds} x {config.procs_per_mode}",
            "hash seeds (worker i of each mode)": ", ".join(
                str(seed) for seed in config.hash_seeds
            ),
            "pyperf suite": str(suite.relative_to(harness.REPO))
            if suite and suite.is_relative_to(harness.REPO)
            else str(suite),
        },
    )
    print(f"[bench] wrote {results} in {elapsed:.0f}s", file=sys.stderr)
    if failed:
        print("[bench] FAILED: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0
