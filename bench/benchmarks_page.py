"""docs/BENCHMARKS.md from the results of one ``bench/run-all``: the machine, the table, what
limits each missed target, how long each step took and the raw lines. Pure: text in, text out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench_findings import findings_for
from bench_results import Result, fmt, spread_text


@dataclass(frozen=True)
class StepSummary:
    title: str
    seconds: float
    ok: bool
    message: str = ""


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def result_row(result: Result) -> str:
    extra = "; ".join(f"{k} {v}" for k, v in result.extra.items())
    case = (
        result.case + (f" ({extra})" if extra else "") + (f"; {result.note}" if result.note else "")
    )
    baseline = (
        f"{result.baseline_name}: {fmt(result.baseline, result.unit)}"
        if result.baseline is not None and result.baseline_name
        else "-"
    )
    ratio = result.ratio
    verdict = {True: "met", False: "**missed**", None: ""}[result.met]
    target = f"{result.target.what} {verdict}".strip() if result.target else "-"
    cells = [
        result.bench,
        case,
        f"{result.figure_name} **{fmt(result.figure, result.unit)}**",
        baseline,
        f"{ratio:.2f}" if ratio is not None else "-",
        spread_text(result.spread, result.unit),
        target,
    ]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def render_page(
    *,
    machine: Mapping[str, str],
    results: Sequence[Result],
    notes: Sequence[str],
    steps: Sequence[StepSummary],
    loads: tuple[str, str],
    command: str,
) -> str:
    missed = [r for r in results if r.met is False]
    failed = [s.title for s in steps if not s.ok]
    rows = [result_row(r) for r in results] + [f"| | {_cell(n)} | | | | | |" for n in notes]
    step_rows = [
        f"| {s.title} | {s.seconds / 60:.1f} min | "
        + ("ok" if s.ok else f"FAILED: {_cell(s.message)}")
        + " |"
        for s in steps
    ]
    total = sum(s.seconds for s in steps) / 60
    raw = [r.line() for r in results] + list(notes)
    parts = [
        "# Benchmarks",
        "",
        f"Written by `{command}`; do not edit by hand. Issue 8: kopflet against bare Docker,",
        "bare netfilter and the Kubernetes SLOs, on the local cluster.",
        "",
        "## How to read this",
        "",
        "- Every figure of ours sits next to a baseline **measured in the same run on the same",
        "  machine** -- bare `docker run -d` on the same engines at the same client concurrency,",
        "  the bare `iptables-restore`/`nft -f` of the very text we applied, the same client",
        "  straight to the instance IP -- and their ratio.",
        "- The machine is small and **shared**: other work ran during the run (load average",
        f"  {loads[0]} at the start, {loads[1]} at the end). Absolute figures swing with that",
        "  load, the ratios much less: they are the numbers to read. Each figure gives",
        "  min/median/max over its repetitions (spread).",
        "- A p99 over a handful of repetitions of one sample each (a sync) is the largest sample:",
        "  nothing is interpolated.",
        "- How each script measures: its docstring (`bench/*.py`).",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {_cell(v)} |" for k, v in machine.items()),
        "",
        "## Results",
        "",
        "| # | what | figure | baseline (same run) | ratio | spread | target |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## Where targets are missed",
        "",
        findings_for(sorted({r.bench for r in missed}), failed_steps=failed),
        "",
        "## Steps",
        "",
        "| step | took | outcome |",
        "|---|---|---|",
        *step_rows,
        "",
        f"Total: {total:.1f} min.",
        "",
        "## Raw lines",
        "",
        "```",
        *raw,
        "```",
        "",
    ]
    return "\n".join(parts)
