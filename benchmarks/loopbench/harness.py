"""Shared machinery: pinned worker processes, interleaved batches, statistics.

How a comparison is measured (issue 10: wall time swung up to 40 % between
identical runs on these 2-core machines; pinned process CPU time stayed within
a few %):

- every mode runs in its own worker processes (`Worker`), all pinned to the
  same CPU with ``os.sched_setaffinity`` while the orchestrator, servers and
  load clients keep to the other CPU;
- the modes take turns in short batches, in an order rotated every round, so
  a slow spell of the machine hits all of them alike;
- the primary figure is *process* CPU time per unit (it includes the loop
  worker threads' CPU), with wall time beside it; the value per mode is the
  median of its batches, and ratios are ratios of medians.

Each process's speed depends on its hash seed (string hashes decide dict
layouts and type-attribute-cache slots): on this machine two processes of the
same mode differed by up to 15 %, more than the noise between batches. So every
mode gets ``procs_per_mode`` processes, worker *i* of every mode runs with the
same ``PYTHONHASHSEED`` (``Config.hash_seeds``, drawn per run and reported),
and round *r* pairs the batches of workers ``r % procs_per_mode``: the two
sides of a pair share a seed. A ratio's 95 % interval comes from a bootstrap
over those process pairs (`Measured.paired_ratio_ci`), so it covers the
spread between seeds, not only between batches; the half interquartile range
of the per-round ratios is shown beside ratios. Results are also kept as pyperf
benchmarks (one pyperf run per worker process) and dumped as a pyperf JSON
suite, for ``python -m pyperf stats/compare_to``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily: worker processes import this module too
    import pyperf  # type: ignore[import-untyped]

BENCH_DIR = Path(__file__).resolve().parents[1]
REPO = BENCH_DIR.parent


@dataclass
class Config:
    """What one ``run.py`` invocation asked for."""

    smoke: bool
    out_dir: Path  # RESULTS.md and the plots
    raw_dir: Path  # the pyperf suite
    rounds: int = 30
    procs_per_mode: int = 6
    batch_seconds: float = 0.08
    worker_cpu: int | None = None
    other_cpu: int | None = None
    redis_server: str | None = None
    suite: list[pyperf.Benchmark] = field(default_factory=list)
    #: ``PYTHONHASHSEED`` of worker *i* of every mode (see the module doc).
    hash_seeds: list[int] = field(default_factory=list)
    #: ``--rounds`` was given (scenarios with their own default follow it then).
    rounds_given: bool = False

    def hash_seed(self, index: int) -> int:
        while len(self.hash_seeds) <= index:
            self.hash_seeds.append(random.SystemRandom().randrange(1, 2**32 - 1))
        return self.hash_seeds[index]

    @classmethod
    def make(cls, smoke: bool, out_dir: Path, raw_dir: Path) -> Config:
        cpus = (
            sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        )
        worker_cpu = cpus[-1] if cpus else None
        other_cpu = cpus[0] if len(cpus) > 1 else None
        if smoke:
            return cls(True, out_dir, raw_dir, 2, 2, 0.004, worker_cpu, other_cpu)
        return cls(False, out_dir, raw_dir, worker_cpu=worker_cpu, other_cpu=other_cpu)

    def scaled(self, full: int, smoke: int) -> int:
        return smoke if self.smoke else full


def pin_self(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a child Python: the repository and benchmarks/ first."""
    path = [str(REPO), str(BENCH_DIR)]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(extra or {})
    return env


class WorkerError(RuntimeError):
    pass


class Worker:
    """A `loopbench.worker` process serving one workload."""

    def __init__(
        self,
        factory: str,
        params: dict[str, Any],
        cpu: int | None,
        env: dict[str, str] | None = None,
        thread: bool = False,
    ) -> None:
        spec = json.dumps(
            {"factory": factory, "params": params, "cpu": cpu, "thread": thread}
        )
        self.label = f"{factory} {params}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loopbench.worker", spec],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=worker_env(env),
            cwd=str(BENCH_DIR),
        )
        hello = self._read()
        self.pid = int(hello["pid"])

    #: Longest wait for one reply; a hung worker must not hang CI.
    reply_timeout = 300.0

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], self.reply_timeout)
        if not ready:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise WorkerError(
                f"worker {self.label}: no reply in {self.reply_timeout:.0f}s; killed"
            )
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait(timeout=10)
            raise WorkerError(f"worker {self.label} exited ({code}) without replying")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise WorkerError(f"worker {self.label}: {reply.get('error')}")
        return reply

    def ask(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@dataclass(frozen=True)
class Mode:
    """One side of a comparison: a workload and its parameters."""

    name: str
    factory: str
    params: dict[str, Any]
    env: dict[str, str] | None = None
    #: Run on a non-main thread of the worker (as a WSGI server would).
    thread: bool = False


@dataclass
class Measured:
    """The batches of one mode for one argument."""

    name: str
    cpu: list[list[float]] = field(default_factory=list)  # per process
    wall: list[list[float]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    #: Per unit, per batch: the change of an outside counter (see `interleave`).
    deltas: list[float] = field(default_factory=list)
    #: (cpu, wall) per unit of each round's batch, in round order.
    rounds: list[tuple[float, float]] = field(default_factory=list)

    def ratios(self, base: Measured, kind: str = "cpu") -> list[float]:
        """Per-round ratios to *base*: each round's batches ran back to back,
        so a slow spell of the machine cancels out of the pair."""
        return [ratio for _, ratio in self._round_ratios(base, kind)]

    def _round_ratios(
        self, base: Measured, kind: str = "cpu"
    ) -> list[tuple[int, float]]:
        """(round number, ratio to *base*) of every round with a nonzero base."""
        index = 0 if kind == "cpu" else 1
        return [
            (round_no, mine[index] / theirs[index])
            for round_no, (mine, theirs) in enumerate(zip(self.rounds, base.rounds))
            if theirs[index] > 0
        ]

    def ratio(self, base: Measured, kind: str = "cpu") -> float:
        """Ratio of the medians, the µs shown beside it (1.0 for itself).

        The background load here comes in bursts shorter than a round, so the
        two batches of a pair rarely share it: a median of per-round ratios
        carries both sides' noise, the ratio of medians neither. The spread
        of the per-round ratios is reported as the uncertainty instead.
        """
        mine, theirs = (
            (self.cpu_us, base.cpu_us)
            if kind == "cpu"
            else (self.wall_us, base.wall_us)
        )
        return mine / theirs if theirs else float("nan")

    def paired_ratio_ci(self, base: Measured) -> tuple[float, float, float]:
        """Median of the per-round ratios to *base*, and its ~95 % interval.

        The interval is a bootstrap over process pairs (round *r* ran worker
        ``r % processes`` of both modes, which share a hash seed): resample
        the pairs with replacement, each with all its rounds, and take the
        median of the pooled ratios; 2.5th and 97.5th percentiles of 2,000
        resamples, from a fixed generator. Rounds of one process are not
        independent, so an interval over rounds alone would be too narrow.
        """
        round_ratios = self._round_ratios(base)
        if not round_ratios:
            nan = float("nan")
            return nan, nan, nan
        processes = max(1, min(len(self.cpu), len(base.cpu)))
        clusters: list[list[float]] = [[] for _ in range(processes)]
        for round_no, ratio in round_ratios:
            clusters[round_no % processes].append(ratio)
        clusters = [cluster for cluster in clusters if cluster]
        rng = random.Random(20261127)
        medians = sorted(
            statistics.median(
                [
                    value
                    for _ in clusters
                    for value in clusters[rng.randrange(len(clusters))]
                ]
            )
            for _ in range(2000)
        )
        low = medians[int(0.025 * len(medians))]
        high = medians[int(0.975 * len(medians)) - 1]
        return statistics.median(ratio for _, ratio in round_ratios), low, high

    def ratio_spread(self, base: Measured) -> float:
        """Half the interquartile range of the per-round CPU ratios."""
        values = sorted(self.ratios(base))
        if len(values) < 4:
            return float("nan")
        q1, _, q3 = statistics.quantiles(values, n=4)
        return (q3 - q1) / 2

    def _all(self, values: list[list[float]]) -> list[float]:
        return [v for run in values for v in run]

    @property
    def cpu_us(self) -> float:
        return statistics.median(self._all(self.cpu)) * 1e6

    @property
    def wall_us(self) -> float:
        return statistics.median(self._all(self.wall)) * 1e6

    @property
    def cpu_spread(self) -> float:
        """Median absolute deviation of the CPU batches, as a fraction."""
        values = self._all(self.cpu)
        med = statistics.median(values)
        return statistics.median(abs(v - med) for v in values) / med if med else 0.0

    def percentile(self, q: float) -> float:
        data = sorted(self.latencies)
        if not data:
            return float("nan")
        index = min(len(data) - 1, max(0, round(q / 100 * (len(data) - 1))))
        return data[index]

    def benchmarks(self, prefix: str) -> list[pyperf.Benchmark]:
        import pyperf

        out = []
        for kind, values in (("cpu", self.cpu), ("wall", self.wall)):
            runs = [
                pyperf.Run(
                    run,
                    metadata={
                        "name": f"{prefix} {self.name} [{kind}]",
                        "unit": "second",
                    },
                    collect_metadata=False,
                )
                for run in values
                if run
            ]
            if runs:
                bench = pyperf.Benchmark(runs[:1])
                for run in runs[1:]:
                    bench.add_run(run)
                out.append(bench)
        return out


class Pool:
    """The worker processes of a set of modes; closed on exit, also on error."""

    def __init__(self, config: Config, modes: Sequence[Mode]) -> None:
        self.config = config
        self.modes = list(modes)
        self.workers: dict[str, list[Worker]] = {}

    def __enter__(self) -> Pool:
        try:
            for mode in self.modes:
                self.workers[mode.name] = [
                    Worker(
                        mode.factory,
                        mode.params,
                        self.config.worker_cpu,
                        {
                            **(mode.env or {}),
                            "PYTHONHASHSEED": str(self.config.hash_seed(index)),
                        },
                        mode.thread,
                    )
                    for index in range(self.config.procs_per_mode)
                ]
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for workers in self.workers.values():
            for worker in workers:
                worker.close()

    def first(self, name: str) -> Worker:
        return self.workers[name][0]

    def each(self, op: str, **fields: Any) -> dict[str, list[dict[str, Any]]]:
        """Ask every worker of every mode; replies per mode."""
        return {
            name: [worker.ask(op, **fields) for worker in workers]
            for name, workers in self.workers.items()
        }

    def _units(self, arg: Any, gc_enabled: bool) -> dict[str, int]:
        """Units per batch for each mode, so that a batch takes ~batch_seconds."""
        if self.config.smoke:
            return dict.fromkeys(self.workers, 1)
        units = {}
        for name, workers in self.workers.items():
            reply = workers[0].ask("time", n=1, arg=arg, gc=gc_enabled)
            reply = workers[0].ask("time", n=3, arg=arg, gc=gc_enabled)
            per_unit = max(reply["wall"], 1e-7)
            units[name] = max(1, min(20000, int(self.config.batch_seconds / per_unit)))
        return units

    def interleave(
        self,
        arg: Any = None,
        *,
        gc_enabled: bool = True,
        rounds: int | None = None,
        units: int | None = None,
        counter: Callable[[], float] | None = None,
    ) -> dict[str, Measured]:
        """Time every mode in rotated, interleaved batches.

        *counter*, if given, is read before and after every batch (outside the
        timed part); its change per unit lands in ``Measured.deltas``.
        """
        rounds = rounds or self.config.rounds
        per_mode = (
            dict.fromkeys(self.workers, units)
            if units
            else self._units(arg, gc_enabled)
        )
        names = list(self.workers)
        results = {name: Measured(name) for name in names}
        for name in names:
            procs = len(self.workers[name])
            results[name].cpu = [[] for _ in range(procs)]
            results[name].wall = [[] for _ in range(procs)]
        for round_no in range(rounds):
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                index = round_no % len(self.workers[name])
                worker = self.workers[name][index]
                before = counter() if counter else 0.0
                reply = worker.ask("time", n=per_mode[name], arg=arg, gc=gc_enabled)
                if counter:
                    results[name].deltas.append((counter() - before) / per_mode[name])
                results[name].rounds.append((reply["cpu"], reply["wall"]))
                results[name].cpu[index].append(reply["cpu"])
                results[name].wall[index].append(reply["wall"])
                results[name].latencies.extend(reply["latencies"])
        return results

    def count(self, arg: Any = None, n: int = 50) -> dict[str, dict[str, Any]]:
        return {
            name: replies[0]
            for name, replies in self.each("count", n=n, arg=arg).items()
        }

    def gc_objects(self, arg: Any = None, n: int = 200) -> dict[str, float]:
        replies = self.each("gc", n=n, arg=arg)
        return {
            name: statistics.mean(r["gc_objects"] for r in reps)
            for name, reps in replies.items()
        }

    def memory(self) -> dict[str, dict[str, Any]]:
        """``stats`` of every mode, its processes merged: RSS and peak are the
        largest, ``n_*`` counters summed, ``info_*`` dicts of counts summed."""
        merged: dict[str, dict[str, Any]] = {}
        for name, replies in self.each("stats").items():
            out: dict[str, Any] = {
                "rss_kib": max(r["rss_kib"] for r in replies),
                "peak_rss_kib": max(r["peak_rss_kib"] for r in replies),
            }
            for reply in replies:
                for key, value in reply.items():
                    if key.startswith("n_"):
                        out[key] = out.get(key, 0) + value
                    elif key.startswith("info_"):
                        counts = out.setdefault(key, {})
                        for kind, count in value.items():
                            counts[kind] = counts.get(kind, 0) + count
            merged[name] = out
        return merged


def same_process_ab(
    config: Config, mode: Mode, sides: Sequence[str], units: int, rounds: int
) -> dict[str, Measured]:
    """Alternate *sides* (the batch argument) in each of the mode's processes.

    For changes that can be switched on and off at run time: no difference of
    process, memory layout or hash seed between the sides, only the change.
    """
    results = {side: Measured(side) for side in sides}
    with Pool(config, [mode]) as pool:
        workers = pool.workers[mode.name]
        for result in results.values():
            result.cpu = [[] for _ in workers]
            result.wall = [[] for _ in workers]
        for side in sides:  # warm both sides up
            for worker in workers:
                worker.ask("time", n=units, arg=side)
        for round_no in range(rounds):
            index = round_no % len(workers)
            order = list(sides) if round_no % 2 == 0 else list(sides)[::-1]
            for side in order:
                reply = workers[index].ask("time", n=units, arg=side)
                results[side].rounds.append((reply["cpu"], reply["wall"]))
                results[side].cpu[index].append(reply["cpu"])
                results[side].wall[index].append(reply["wall"])
    return results


def verdict(
    measured: Measured, base: Measured, ok: Callable[[float], bool]
) -> tuple[bool | None, str]:
    """Judge ``ok(measured / base)`` on the paired ratio's 95 % interval.

    True if the whole interval passes, False if none of it does, None
    (inconclusive) if it straddles the target; with the interval as text.
    """
    paired, low, high = measured.paired_ratio_ci(base)
    return judged(low, high, ok), f"paired {paired:.2f}, 95 % CI {low:.2f}-{high:.2f}"


def judged(low: float, high: float, ok: Callable[[float], bool]) -> bool | None:
    """True if both ends of an interval pass ``ok``, False if neither does,
    None (inconclusive) if it straddles the target."""
    passes = ok(low), ok(high)
    return True if all(passes) else False if not any(passes) else None


def record(config: Config, prefix: str, measured: dict[str, Measured]) -> None:
    for result in measured.values():
        config.suite.extend(result.benchmarks(prefix))


def dump_suite(config: Config) -> Path | None:
    if not config.suite:
        return None
    import pyperf

    path = config.raw_dir / "pyperf-suite.json"
    pyperf.BenchmarkSuite(config.suite).dump(str(path), replace=True)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    port: int, proc: subprocess.Popen[Any], timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}) before listening")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@contextlib.contextmanager
def server_process(
    argv: list[str],
    port: int,
    *,
    cpu: int | None,
    log: Path,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A server on 127.0.0.1:*port*, pinned to *cpu* (with the processes it
    forks), its output in *log*; always stopped afterwards, also on error."""

    def pin() -> None:  # in the child, before exec: inherited by its workers
        pin_self(cpu)

    with open(log, "ab") as output:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=str(BENCH_DIR),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=pin,
        )
    try:
        try:
            wait_for_port(port, proc)
        except RuntimeError as exc:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{exc}; {log.name} ends with:\n{tail}") from None
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def proc_memory(pid: int) -> dict[str, int]:
    out = {"rss_kib": 0, "peak_rss_kib": 0}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                out["rss_kib"] = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                out["peak_rss_kib"] = int(line.split()[1])
    return out


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(p) for p in children.read().split()]
    except OSError:
        return []


def ratio(value: float, base: float) -> float:
    return value / base if base else float("nan")
