"""RESULTS.md and the PNG plots."""

from __future__ import annotations

import datetime
import os
import platform
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _subplots() -> tuple[Figure, Axes]:
    """matplotlib, imported only when plotting (workers import this module)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=110)
    return fig, ax


def _save(fig: Figure, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"**{self.title}**", ""] if self.title else []
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append("|" + "|".join("---" for _ in self.headers) + "|")
        lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
        lines.extend(["", *self.notes] if self.notes else [])
        return "\n".join(lines)


@dataclass
class Goal:
    name: str
    target: str
    measured: str
    met: bool | None  # None: inconclusive (the uncertainty straddles the target)


@dataclass
class Section:
    key: str
    title: str
    intro: str = ""
    tables: list[Table] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    error: str | None = None


def us(seconds_or_us: float, *, already_us: bool = True) -> str:
    value = seconds_or_us if already_us else seconds_or_us * 1e6
    if value != value:  # NaN
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def times(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}x"


def spread(value: float) -> str:
    """`` ±0.03`` (a ratio's half IQR), or nothing when there are too few rounds."""
    return "" if value != value else f" ±{value:.2f}"


def pct(value: float) -> str:
    return "n/a" if value != value else f"{value * 100:+.1f} %"


def kib(value: float) -> str:
    return f"{value / 1024:.1f} MiB"


def memory_table(
    mem: dict[str, dict[str, Any]], names: Sequence[str], labels: dict[str, str]
) -> Table:
    """RSS and peak RSS of each mode's worker processes (the largest of them)."""
    return Table(
        "Memory of the worker processes at the end of the scenario",
        ["mode", "RSS", "peak RSS"],
        [
            [labels.get(n, n), kib(mem[n]["rss_kib"]), kib(mem[n]["peak_rss_kib"])]
            for n in names
        ],
    )


def _repo_revision() -> str:
    """The commit measured, and whether the work tree differed from it."""
    import subprocess

    repo = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "asgiref_loopshare")
    return f"{commit}{' + uncommitted changes' if dirty else ''}"


def machine_info() -> dict[str, str]:
    from importlib.metadata import version

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for dist in ("asgiref", "Django", "redis", "gunicorn", "pyperf"):
        try:
            versions[dist] = version(dist)
        except Exception:
            versions[dist] = "not installed"
    return {
        "asgiref-loopshare": _repo_revision(),
        "machine": f"{platform.node()} ({platform.system()} {platform.release()}, "
        f"{platform.machine()})",
        "cpu": cpu,
        "cpu count": f"{os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})"
        if hasattr(os, "sched_getaffinity")
        else str(os.cpu_count()),
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        **{name: ver for name, ver in versions.items()},
        "date": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        ),
    }


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds used so far: by the whole machine and by this process tree."""

    #: Non-idle time of all CPUs (``/proc/stat``: user, nice, system, irq,
    #: softirq), whoever used it.
    machine_busy: float
    #: Time the hypervisor gave to other guests while this one wanted to run.
    machine_steal: float
    #: This process and its reaped descendants (the workers, the servers).
    own: float
    at: float


def cpu_times() -> CpuTimes | None:
    """The counters now, or ``None`` where ``/proc/stat`` is missing."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(field) for field in fields[1:9]
    )
    hz = os.sysconf("SC_CLK_TCK")
    usages = [
        resource.getrusage(who)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    ]
    return CpuTimes(
        machine_busy=(user + nice + system + irq + softirq) / hz,
        machine_steal=steal / hz,
        own=sum(usage.ru_utime + usage.ru_stime for usage in usages),
        at=time.monotonic(),
    )


#: Other work above this share of the machine's CPU time makes it "shared".
BUSY_SHARE = 0.05


def other_load(start: CpuTimes | None, end: CpuTimes | None) -> tuple[str, str]:
    """What else ran on the machine between *start* and *end*.

    Returns the report's table cell and its sentence for the method paragraph.
    Other processes' share is the machine's busy time less this process tree's,
    over all CPUs; steal is time the hypervisor ran other guests instead.
    """
    if start is None or end is None or end.at <= start.at:
        return "not measured", "Other load on the machine was not measured."
    capacity = (end.at - start.at) * (os.cpu_count() or 1)
    busy = end.machine_busy - start.machine_busy
    other = max(0.0, busy - (end.own - start.own)) / capacity
    steal = max(0.0, end.machine_steal - start.machine_steal) / capacity
    figures = f"other processes {other * 100:.1f} %, steal {steal * 100:.1f} %"
    cell = f"{figures} of all CPUs"
    shares = f"{figures} of its CPU time"
    if other >= BUSY_SHARE or steal >= BUSY_SHARE:
        sentence = (
            f"Other work ran on this machine during the run ({shares}): absolute µs "
            "rise with such load, ratios much less."
        )
    else:
        sentence = (
            f"No other work ran on this machine during the run ({shares}). What "
            "loads a virtual machine's host and is not reported as steal stays "
            "invisible from inside, so absolute µs can still move between runs; "
            "ratios much less."
        )
    return cell, sentence


def line_plot(
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    logx: bool = False,
    logy: bool = False,
) -> str:
    fig, ax = _subplots()
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def bar_plot(
    path: Path,
    title: str,
    ylabel: str,
    groups: list[str],
    series: Mapping[str, Sequence[float]],
) -> str:
    fig, ax = _subplots()
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [g + i * width for g in range(len(groups))]
        bars = ax.bar(xs, values, width=width, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))])
    ax.set_xticklabels(groups)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def goal_mark(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "inconclusive"}[met]


def write_results(
    path: Path,
    sections: list[Section],
    info: dict[str, str],
    *,
    smoke: bool,
    command: str,
    elapsed: float,
    load: str,
    extra: dict[str, Any] | None = None,
) -> None:
    out: list[str] = ["# asgiref-loopshare benchmark results", ""]
    if smoke:
        out += ["> **Smoke run**: tiny loop counts; the figures mean nothing.", ""]
    out += [
        f"Written by `{command}` in {elapsed:.0f} s. Method: each mode runs in its "
        "own worker processes pinned to one CPU (`os.sched_setaffinity`); modes take "
        "turns in short batches, order rotated each round; the primary figure is "
        "**process CPU time per unit** (includes the loop worker threads), median "
        "of the batches, wall time beside it. A process's speed depends on its hash "
        "seed, so each mode runs in several processes and worker *i* of every mode "
        "gets the same `PYTHONHASHSEED` (listed below); round *r* pairs the "
        "batches of workers `r mod processes`. Ratios are ratios of medians; ± is "
        "half the interquartile range of the per-round ratios of paired batches; "
        "a goal's *paired* ratio is the median of those, with a 95 % interval "
        "bootstrapped over the process pairs (it covers the spread between "
        f"seeds). {load} Raw values: the pyperf suite named below "
        "(`python -m pyperf stats FILE`).",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in info.items()),
        *(f"| {k} | {v} |" for k, v in (extra or {}).items()),
        "",
        "## Goals",
        "",
        "| scenario | goal | target | measured | |",
        "|---|---|---|---|---|",
    ]
    for section in sections:
        for goal in section.goals:
            out.append(
                f"| {section.key} | {goal.name} | {goal.target} | {goal.measured} | "
                f"{goal_mark(goal.met)} |"
            )
    out.append("")
    for section in sections:
        out += [f"## {section.key}. {section.title}", ""]
        if section.intro:
            out += [section.intro, ""]
        if section.error:
            out += [f"**Scenario failed:** `{section.error}`", ""]
        for table in section.tables:
            out += [table.markdown(), ""]
        for plot in section.plots:
            out += [f"![{plot}]({plot})", ""]
        if section.findings:
            out += ["Findings:", ""]
            out += [f"- {finding}" for finding in section.findings]
            out.append("")
    path.write_text("\n".join(out))
