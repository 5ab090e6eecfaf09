"""Figures for ``writethrough compare --plot`` (matplotlib, an optional extra)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..tools.compare import CompareResult


def save_plot(result: CompareResult, path: str | Path) -> None:
    """Draw bars per strategy (extra DB reads/write, hit ratio, write and read p50/p99) to ``path``.

    Needs matplotlib (``pip install 'writethrough[plot]'``); uses the Agg canvas,
    never pyplot, so no global backend is changed.
    """
    figure_cls, canvas_cls = _matplotlib()
    names = [s.strategy for s in result.strategies]
    xs = list(range(len(names)))
    fig = figure_cls(figsize=(13, 3.6), layout="constrained")
    canvas_cls(fig)
    axes = fig.subplots(1, 4)
    ax = axes[0]
    extra = [s.extra_db_reads_per_write for s in result.strategies]
    background = [s.background_db_reads_per_write for s in result.strategies]
    ax.bar(xs, extra, color="tab:red", label="read-back")
    bars = ax.bar(xs, background, bottom=extra, color="tab:gray", label="background")
    ax.bar_label(
        bars, labels=[f"{e:.2f} + {b:.2f}" for e, b in zip(extra, background, strict=True)]
    )
    ax.set_ylim(0, max([1.0, *(e + b for e, b in zip(extra, background, strict=True))]) * 1.15)
    ax.set_title("extra DB reads per write")
    ax.legend(fontsize="small", loc="upper left")
    bars = axes[1].bar(xs, [s.hit_ratio for s in result.strategies], color="tab:green")
    axes[1].bar_label(bars, fmt="%.3f")
    axes[1].set_ylim(0, 1.15)
    axes[1].set_title("hit ratio")
    for ax, what in ((axes[2], "write"), (axes[3], "read")):
        width = 0.38
        for offset, pct in ((-width / 2, "p50"), (width / 2, "p99")):
            values = [float(getattr(s, f"{what}_{pct}_us")) for s in result.strategies]
            ax.bar([x + offset for x in xs], values, width, label=pct)
        ax.set_title(f"{what} latency (µs)")
        ax.legend(fontsize="small")
    for ax in axes:
        ax.set_xticks(xs, names)
    w = result.workload
    fig.suptitle(
        f"writethrough compare: {w.updates:,} updates, {w.keys:,} keys, "
        f"{w.reads_after_write} read-back(s)/write, seed {w.seed}, protocol {result.protocol}"
    )
    fig.savefig(path, dpi=100)


def _matplotlib() -> tuple[Any, Any]:
    """matplotlib's Figure and Agg canvas, or a ConfigError saying how to install it."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError(
            f"--plot needs matplotlib, which is not installed ({exc.name}); "
            "install it with: pip install 'writethrough[plot]'"
        ) from exc
    return Figure, FigureCanvasAgg


def check_plot_path(path: str | Path) -> None:
    """Fail early (before a long run) if ``path`` cannot be plotted to."""
    _, canvas_cls = _matplotlib()
    target = Path(path)
    suffix = target.suffix.lower().lstrip(".")
    if suffix not in canvas_cls.get_supported_filetypes():
        raise ConfigError(f"cannot plot to {str(path)!r}: use a .png (or .svg, .pdf) file name")
    if not target.parent.is_dir():
        raise ConfigError(f"cannot plot to {str(path)!r}: no directory {str(target.parent)!r}")
