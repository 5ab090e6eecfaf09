"""Write a benchmark :class:`Report` as Markdown + PNG plots (+ the raw JSON) into a directory.

Plots need matplotlib (``pip install 'writethrough[plot]'``); it is imported here
only, with the Agg canvas (never pyplot, so no global backend is changed). Without
it the Markdown says so and the rest is written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .model import Measure, Report, Row, percentile

LATENCY_PNG = "latency.png"
CONCURRENCY_PNG = "concurrency.png"
DB_QUERIES_PNG = "db_queries.png"


def write_report(report: Report, directory: str | Path) -> list[Path]:
    """Write ``README.md``, ``bench.json`` and the plots into ``directory``; return the paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "bench.json"]
    written[0].write_text(json.dumps(report.to_json(), indent=2, default=str) + "\n", encoding="utf-8")
    plots: list[str] = []
    plot_note = ""
    try:
        plots = _plots(report, out)
    except ImportError as exc:
        plot_note = f"(plots not drawn: matplotlib is not installed ({exc.name}); pip install 'writethrough[plot]')"
    written += [out / name for name in plots]
    markdown = out / "README.md"
    markdown.write_text(render_markdown(report, plots, plot_note), encoding="utf-8")
    written.append(markdown)
    return written


def _ratio(m: Measure) -> str:
    if m.ratio is None or math.isnan(m.ratio):
        return ""
    return f"{m.ratio:.2f}x"


def _cell(m: Measure) -> str:
    ratio = _ratio(m)
    if ratio and m.cpu_ratio is not None and not math.isnan(m.cpu_ratio):
        ratio += f"; CPU {m.cpu_ratio:.2f}x"
    return f"{m.shown()} ({ratio})" if ratio else m.shown()


def _met(row: Row) -> str:
    return {True: "yes", False: "**no**", None: "—"}[row.met]


def render_markdown(report: Report, plots: list[str], plot_note: str = "") -> str:
    meta = report.meta
    m = meta.get("machine", {})
    v = meta.get("versions", {})
    s = meta.get("settings", {})
    servers = meta.get("servers", {})
    lines = [
        "# writethrough benchmark report",
        "",
        f"Measured {m.get('date', '?')} on {m.get('cpu', '?')}, {m.get('cores', '?')} cores "
        f"({m.get('platform', '?')}), load average at start {m.get('load_average_at_start')}, "
        f"at end {m.get('load_average_at_end')} (other sessions share the machine). "
        f"Run took {report.elapsed_s:.0f} s ({'--quick' if s.get('quick') else 'full run'}, "
        f"{s.get('repetitions')} repetitions per row; seconds per step: "
        f"{meta.get('step_seconds', {})}).",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in {**v, **servers}.items()) + ".",
        f"Redis: {s.get('redis')}; PostgreSQL: {s.get('postgres')} (loopback). "
        f"DB delay for the delayed rows: {s.get('db_latency_ms')} ms per round trip "
        "(TCP fault proxy in front of PostgreSQL).",
        "",
        "Method: in each row the baseline and every contender run side by side in the same "
        "process, interleaved repetition by repetition (the order rotates), after one "
        "untimed warm-up repetition; a ratio is the **median of the per-repetition ratios** "
        "to the baseline of the same repetition (latency: lower is better; ops/s: higher is "
        "better). CPU per op is the process CPU time over the same repetitions. "
        "Figures from a shared 2-core machine are noisy: read the ratios, not the absolutes.",
        "",
        *_load_warning(m),
        "| path | baseline | writethrough (ratio) | peers (ratio) | goal | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in report.rows:
        ours = [c for c in row.contenders if c.name.startswith("writethrough")]
        peers = [c for c in row.contenders if not c.name.startswith("writethrough")]
        lines.append(
            f"| {row.path} | {row.baseline.name}: {row.baseline.shown()} | "
            + "<br>".join(f"{c.name}: {_cell(c)}" for c in ours)
            + " | "
            + ("<br>".join(f"{c.name}: {_cell(c)}" for c in peers) or "—")
            + f" | {row.goal} | {_met(row)} |"
        )
    lines += ["", "## Rows in detail", ""]
    for row in report.rows:
        lines += [f"### {row.path}", "", row.detail, ""]
        cpu = [c for c in [row.baseline, *row.contenders] if c.cpu_us is not None]
        if cpu:
            lines.append(
                "CPU per op: "
                + ", ".join(
                    f"{c.name} {c.cpu_us:.1f} µs"
                    + (f" ({c.cpu_ratio:.2f}x)" if c.cpu_ratio and c is not row.baseline else "")
                    for c in cpu
                )
                + "."
            )
        spread = [c for c in row.contenders if c.ratio_range is not None]
        if spread:
            lines.append(
                "Ratio range over repetitions: "
                + ", ".join(
                    f"{c.name} {c.ratio_range[0]:.2f} to {c.ratio_range[1]:.2f}x"  # type: ignore[index]
                    for c in spread
                )
                + "."
            )
        for name, samples in row.samples.items():
            lines.append(
                f"Latency {name}: p50 {percentile(samples, 50):.1f} µs, "
                f"p99 {percentile(samples, 99):.1f} µs ({len(samples):,} samples)."
            )
        lines.append("")
    if report.concurrency:
        levels = sorted({t for c in report.concurrency.values() for t in c})
        lines += ["## async get hit: ops/s against concurrency", ""]
        lines.append("| contender | " + " | ".join(f"{t} tasks" for t in levels) + " |")
        lines.append("| --- |" + " --- |" * len(levels))
        for name, curve in report.concurrency.items():
            lines.append(
                f"| {name} | " + " | ".join(f"{curve.get(t, float('nan')):,.0f}" for t in levels) + " |"
            )
        lines.append("")
    if report.compare:
        lines += _compare_markdown(report.compare)
    if plots or plot_note:
        lines += ["## Plots", ""]
        lines += [f"![{name}]({name})" for name in plots]
        if plot_note:
            lines.append(plot_note)
        lines.append("")
    return "\n".join(lines)


def _load_warning(machine: dict[str, Any]) -> list[str]:
    cores = machine.get("cores") or 1
    loads = [x for x in (machine.get("load_average_at_start"), machine.get("load_average_at_end")) if x]
    worst = max((x[0] for x in loads), default=0.0)
    if worst <= cores:
        return []
    return [
        f"**This run shared the machine with other work: load average up to {worst:.1f} on "
        f"{cores} cores.** Wall-clock ratios then swing widely between repetitions (see each "
        "row's range; the PostgreSQL rows most, since the server competes for the same "
        "cores); the CPU-per-op ratios (this process's own CPU time per op, shown as "
        "'CPU' in the table) are the steadier measure of the library's own cost. Counts "
        "(Redis calls, DB loads, bytes) do not depend on load.",
        "",
    ]


def _compare_markdown(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## DB queries per write per strategy (`writethrough compare`)",
        "",
        "A share of 20% of the writes create a new key; every write is read back right "
        "after. 'extra DB reads' are the read-backs' DB reads per write.",
        "",
        "| DB delay | strategy | extra DB reads / update | extra DB reads / create | "
        "write p50 / p99 µs | read-after-update p50 / p99 µs | read-after-create p50 / p99 µs "
        "| stale reads |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        w = result["workload"]
        delay = f"+{result['db_latency']:g} ms ({w['db_latency_how']})" if result["db_latency"] else "none"
        for s in result["strategies"]:
            lines.append(
                f"| {delay} | {s['strategy']} | {s['extra_db_reads_per_update']:.2f} | "
                f"{s['extra_db_reads_per_create']:.2f} | {s['write_p50_us']:.0f} / {s['write_p99_us']:.0f} | "
                f"{s['update_read_back_p50_us']:.0f} / {s['update_read_back_p99_us']:.0f} | "
                f"{s['create_read_back_p50_us']:.0f} / {s['create_read_back_p99_us']:.0f} | "
                f"{s['stale_reads']} |"
            )
    w = results[0]["workload"]
    lines += [
        "",
        f"Workload: {w['updates']:,} updates over {w['keys']:,} keys (+ new keys), source "
        f"{w['source']}, cache {w['cache']}.",
        "",
    ]
    return lines


# -- plots ----------------------------------------------------------------------------------


def _plots(report: Report, out: Path) -> list[str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    drawn: list[str] = []
    rows = [row for row in report.rows if row.samples]
    if rows:
        cols = min(3, len(rows))
        lines = math.ceil(len(rows) / cols)
        fig = Figure(figsize=(5.2 * cols, 3.8 * lines), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(lines, cols, squeeze=False)
        for ax, row in zip(axes.flat, rows, strict=False):
            for name, samples in row.samples.items():
                ordered = sorted(samples)
                ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
                ax.plot(ordered, ys, label=name, linewidth=1.2)
            ax.set_xscale("log")
            ax.set_xlabel("latency (µs, log)")
            ax.set_ylabel("share of calls ≤ x")
            ax.set_title(_short(row.path), fontsize="small")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="x-small")
        for ax in list(axes.flat)[len(rows) :]:
            ax.set_visible(False)
        fig.suptitle("Latency distributions per case (ECDF)")
        fig.savefig(out / LATENCY_PNG, dpi=90)
        drawn.append(LATENCY_PNG)
    if report.concurrency:
        fig = Figure(figsize=(7, 4.2), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for name, curve in report.concurrency.items():
            levels = sorted(curve)
            ax.plot(levels, [curve[t] for t in levels], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent asyncio tasks")
        ax.set_ylabel("get hits per second")
        ax.set_title("async get hit: ops/s against concurrency")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        fig.savefig(out / CONCURRENCY_PNG, dpi=90)
        drawn.append(CONCURRENCY_PNG)
    if report.compare:
        fig = Figure(figsize=(11, 4.2), layout="constrained")
        FigureCanvasAgg(fig)
        left, right = fig.subplots(1, 2)
        first = report.compare[0]["strategies"]
        names = [s["strategy"] for s in first]
        xs = list(range(len(names)))
        width = 0.38
        for offset, field, label in ((-width / 2, "extra_db_reads_per_update", "after an update"),
                                     (width / 2, "extra_db_reads_per_create", "after a create")):  # fmt: skip
            bars = left.bar([x + offset for x in xs], [s[field] for s in first], width, label=label)
            left.bar_label(bars, fmt="%.2f")
        left.set_xticks(xs, names)
        left.set_ylim(0, 1.3)
        left.set_title("DB queries per write (read back right after)")
        left.legend(fontsize="small")
        width = 0.8 / len(report.compare)
        for i, result in enumerate(report.compare):
            label = f"+{result['db_latency']:g} ms DB" if result["db_latency"] else "no DB delay"
            values = [s["update_read_back_p50_us"] for s in result["strategies"]]
            bars = right.bar([x - 0.4 + width * (i + 0.5) for x in xs], values, width, label=label)
            right.bar_label(bars, fmt="%.0f")
        right.set_xticks(xs, names)
        right.set_yscale("log")
        right.set_title("read-after-update p50 (µs, log)")
        right.legend(fontsize="small")
        fig.savefig(out / DB_QUERIES_PNG, dpi=90)
        drawn.append(DB_QUERIES_PNG)
    return drawn


def _short(path: str) -> str:
    text = path.replace("`", "")
    return text if len(text) <= 60 else text[:57] + "..."
