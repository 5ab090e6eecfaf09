"""``writethrough chaos``: run every protocol under injected faults and check every read.

    $ writethrough chaos                                   # all scenarios, SQLite + memory://
    $ writethrough chaos --scenario all --ops 100000 --clients 16 \\
          --source postgresql://app@db/app --cache redis://127.0.0.1:6379/0
    $ writethrough chaos --scenario cache-timeout,hot-writers --json --history ops.jsonl

Prints one table per protocol (naive write-through, naive invalidate, write-through,
invalidate), a row per scenario: reads checked, stale reads after an acknowledged write,
the longest stale window, reads during PENDING_REPAIR, final cache/DB divergence, and
nines (-log10 of the violation rate; for none, of the 3/n bound). Exit status 1 if a
versioned protocol broke the guarantee.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ..tools import chaos
from ..tools.chaos import (
    PROTOCOLS,
    SCENARIOS,
    ChaosResult,
    PhaseResult,
    ProtocolSpec,
    guarantee_held,
)
from ..tools.checker import Report
from .args import CACHE_ENV, SOURCE_ENV, Subparsers, add_url_arg, int_at_least
from .output import table_console

EXIT_OK, EXIT_BROKEN = 0, 1
PROTOCOL_NAMES = {p.label.replace(" ", "-"): p for p in PROTOCOLS}
HEADERS = ("scenario", "checked\nreads", "stale reads\nafter ack", "max stale\nwindow",
           "reads during\nPENDING_REPAIR", "final\ndivergence", "non-\nmonotonic", "nines")


def _protocols(text: str) -> tuple[ProtocolSpec, ...]:
    groups = {"all": PROTOCOLS, "naive": PROTOCOLS[:2], "versioned": PROTOCOLS[2:]}
    chosen: list[ProtocolSpec] = []
    for name in (n.strip() for n in text.split(",") if n.strip()):
        found = groups.get(name) or ((PROTOCOL_NAMES[name],) if name in PROTOCOL_NAMES else None)
        if found is None:
            known = ", ".join([*groups, *PROTOCOL_NAMES])
            raise argparse.ArgumentTypeError(f"unknown protocol {name!r}; use a comma list of {known}")
        chosen += [p for p in found if p not in chosen]
    if not chosen:
        raise argparse.ArgumentTypeError("expected at least one protocol")
    return tuple(p for p in PROTOCOLS if p in chosen)  # table order


def add_chaos(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Register ``writethrough chaos``."""
    scenario_list = "\n".join(f"  {s.name:<21} {s.description}" for s in SCENARIOS)
    scenario_list += f"\n  {ORM_MIX:<21} {ORM_MIX_HELP} (not in all)"
    parser = subparsers.add_parser(
        "chaos", help="run every protocol under injected faults and check every read",
        description=(__doc__ or "").split("\n\n", 2)[2] + "\nscenarios:\n" + scenario_list,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--scenario", action="append", metavar="NAME",
        help="a scenario, a comma list, or all (default); repeatable")
    add("--ops", type=int_at_least(1), default=20_000, help="ops per protocol, split over the scenarios (20000)")
    add("--clients", type=int_at_least(1), default=16, help="client threads per phase (16)")
    add("--stores", type=int_at_least(1), default=4,
        help="stores the clients share, as app processes sharing one cache would (4)")
    add_url_arg(parser, "--source", SOURCE_ENV,
                "source URL (else a SQLite file in a temp dir, deleted after)")
    add_url_arg(parser, "--cache", CACHE_ENV, "cache URL (else memory://)", default="memory://")
    add("--seed", type=int, default=42, help="seed of the workload and the faults (42)")
    add("--protocols", type=_protocols, default=PROTOCOLS,
        help="comma list of naive-write-through, naive-invalidate, write-through, invalidate, "
             "or naive, versioned, all (default)")
    add("--allow-flushall", action="store_true",
        help="the flush scenario may FLUSHALL + SCRIPT FLUSH the cache server (default: it deletes "
             "the run's keys only, safe on a shared server)")
    add("--json", action="store_true", help="print one JSON object on stdout, nothing else")
    add("--history", metavar="FILE", default=None,
        help="keep every op as JSON lines (checker.read_history reads it)")
    return parser


ORM_MIX = "orm-mix"
ORM_MIX_HELP = ("SQLAlchemy writes, raw SQL writes (through the listener) and store reads on one "
                "table's namespace, the cache's wire flapping (PostgreSQL + redis:// only)")


def _split_orm_mix(names: list[str] | None) -> tuple[list[str] | None, bool]:
    """The scenarios for the protocol matrix, and whether ``orm-mix`` was asked for."""
    if not names:
        return None, False
    parts = [n.strip() for name in names for n in name.split(",") if n.strip()]
    rest = [n for n in parts if n != ORM_MIX]
    return rest, len(rest) != len(parts)


def run_chaos(args: argparse.Namespace) -> int:
    """Run ``writethrough chaos``; return the exit code."""
    names, orm_mix = _split_orm_mix(args.scenario)
    if orm_mix and not names:
        return run_orm_mix(args)
    chosen = chaos.scenarios(names or "all")
    err = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="writethrough-chaos-") as tmp, Progress(
        TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True,
        disable=args.json or not err.is_terminal,
    ) as bar:
        task = bar.add_task("chaos", total=None)

        def progress(phase: str, done: int, total: int) -> None:
            bar.update(task, description=phase, completed=done, total=total)

        result = chaos.run_chaos(
            args.source or f"sqlite:///{Path(tmp) / 'chaos.db'}", args.cache, chosen, args.protocols,
            ops=args.ops, clients=args.clients, seed=args.seed, stores=args.stores,
            allow_flushall=args.allow_flushall, history=args.history, progress=progress)
    if args.source is None:
        result.source = "SQLite in a temp file (deleted)"
    if args.json:
        sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
    else:
        print_result(result, args.history)
    code = EXIT_OK if result.ok else EXIT_BROKEN
    return max(code, run_orm_mix(args)) if orm_mix else code


def run_orm_mix(args: argparse.Namespace) -> int:
    """The ``orm-mix`` scenario (``tools/orm_chaos.py``): target 0 stale reads after ack and
    0 final divergence."""
    from ..errors import ConfigError
    from ..tools import orm_chaos

    if not (args.source or "").startswith(("postgresql://", "postgres://")) or \
            not args.cache.startswith("redis://"):
        raise ConfigError(f"the {ORM_MIX} scenario needs --source postgresql://... and "
                          "--cache redis://...")
    found = orm_chaos.run(args.source, args.cache, ops=args.ops, seed=args.seed)
    r = found.report
    held = r.stale_reads_after_ack == 0 and r.final_divergence == 0
    if args.json:
        sys.stdout.write(json.dumps({ORM_MIX: {
            **r.to_json(), "orm_writes": found.orm_writes, "raw_writes": found.raw_writes,
            "orm_conflicts": found.orm_conflicts, "outcomes": found.outcomes,
            "listener_applied": found.listener_applied, "cache_flaps": found.flaps,
            "target_held": held}}, indent=2) + "\n")
        return EXIT_OK if held else EXIT_BROKEN
    out = table_console(120)
    table = Table(title="write-through: ORM + raw SQL (listener) + reads", title_justify="left",
                  title_style="bold", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  collapse_padding=True)
    for header in HEADERS:
        table.add_column(header, justify="left" if header == "scenario" else "right", no_wrap=True)
    table.add_row(*_row(ORM_MIX, r))
    out.print(table)
    out.print(f"{found.orm_writes:,} ORM writes ({found.orm_conflicts:,} version conflicts "
              f"retried; outcomes {found.outcomes}), {found.raw_writes:,} raw SQL writes "
              f"(recorded pending until the listener applies them; it applied "
              f"{found.listener_applied:,} events), {found.flaps:,} cache flaps.")
    verdict = "[bold green]PASS[/]" if held else "[bold red]FAIL[/]"
    out.print(f"{verdict} {ORM_MIX}: {r.stale_reads_after_ack:,} stale reads after ack, "
              f"{r.final_divergence:,} final divergence in {r.checked_reads:,} checked reads "
              f"({r.monotonic_violations:,} non-monotonic).", soft_wrap=True)
    return EXIT_OK if held else EXIT_BROKEN


def _row(name: str, r: Report, style: str = "") -> list[str]:
    def bad(n: int) -> str:
        return f"[red]{n:,}[/]" if n else "0"

    window = f"{r.max_stale_window_s * 1000:,.1f} ms" if r.stale_reads_after_ack else "-"
    return [f"[{style}]{name}[/]" if style else name, f"{r.checked_reads:,}", bad(r.stale_reads_after_ack),
            window, f"{r.reads_during_pending_repair:,}", bad(r.final_divergence),
            f"{r.monotonic_violations:,}", f"{r.nines:.2f}"]


def protocol_table(label: str, phases: Sequence[PhaseResult], total: Report) -> Table:
    """One protocol: a row per scenario that ran, the killed writers' keys, the total."""
    table = Table(title=label, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, collapse_padding=True)
    for header in HEADERS:
        table.add_column(header, justify="left" if header == "scenario" else "right", no_wrap=True)
    for ph in phases:
        table.add_row(*_row(ph.scenario.name, ph.report))
        if ph.scenario.kill == "best-effort":
            table.add_row("  killed writer, best-effort", "", "", "", "",
                          f"[yellow]{ph.killed_writer_divergence:,}[/]", "", "", style="dim")
    table.add_row(*_row("all scenarios", total, "bold"), end_section=True)
    return table


def print_result(result: ChaosResult, history: str | None = None) -> None:
    out = table_console(120)
    for p in result.protocols:
        ran = [ph for ph in result.phases if ph.protocol == p.protocol and ph.skipped is None]
        if ran:
            out.print(protocol_table(p.protocol.label, ran, p.report))
            out.print()
    skipped: dict[str, set[str]] = {}
    for ph in result.phases:
        if ph.skipped is not None:
            skipped.setdefault(f"{ph.scenario.name}: {ph.skipped}", set()).add(ph.protocol.label)
        for note in ph.notes:
            out.print(f"[yellow]note[/] {escape(ph.protocol.label)} · {ph.scenario.name}: {escape(note)}")
    for why, labels in skipped.items():
        which = "" if len(labels) == len(result.protocols) else f" ({', '.join(sorted(labels))})"
        out.print(f"[dim]skipped {escape(why)}{escape(which)}[/]")
    out.print(f"Source {escape(result.source)}, cache {escape(result.cache)}; {result.ops:,} ops per "
              f"protocol, {result.clients} clients, seed {result.seed}; TTL 3600 s, so stale data "
              "persists. Nines: -log10 of the checker's violation rate (stale reads after ack, "
              "non-monotonic reads of a client, overdue repairs); with none, of its 3/n bound.")
    if any(ph.scenario.kill == "best-effort" and ph.skipped is None for ph in result.phases):
        out.print("'killed writer, best-effort': keys a SIGKILLed writer left stale without the "
                  "outbox (race 4, TTL-bounded): expected, not counted as divergence.")
    if history:
        out.print(f"History written to {escape(history)}.")
    out.print(summary(result), soft_wrap=True)  # one line, for grep


def summary(result: ChaosResult) -> str:
    """The last line: PASS / FAIL for the versioned protocols, and whether the faults bit."""
    versioned = [p for p in result.protocols if p.protocol.versioned and p.phases]
    naive = [p for p in result.protocols if not p.protocol.versioned and p.phases]
    parts = []
    if versioned:
        reads = sum(p.report.checked_reads for p in versioned)
        broken = [p for p in versioned if not guarantee_held(p.report)]
        if broken:
            what = "; ".join(f"{p.protocol.label}: {p.report.stale_reads_after_ack:,} stale reads "
                             f"after ack, {p.report.monotonic_violations:,} non-monotonic, "
                             f"{p.report.pending_repair_overdue:,} overdue repairs, "
                             f"{p.report.final_divergence:,} final divergence" for p in broken)
            first = broken[0].report.violations[:1]
            parts.append(f"[bold red]FAIL[/] {what}" + "".join(f". First: {escape(v)}" for v in first))
        else:
            nines = min(p.report.nines for p in versioned)
            parts.append(f"[bold green]PASS[/] versioned: 0 stale reads after ack, 0 non-monotonic "
                         f"reads and 0 final divergence in {reads:,} checked reads (>= {nines:.2f} "
                         "nines each)")
    if naive:
        stale = sum(p.report.stale_reads_after_ack for p in naive)
        parts.append(f"naive: {stale:,} stale reads after ack, "
                     + ("the faults bite" if result.faults_bite else
                        "[bold yellow]a naive protocol showed none: the faults did not bite[/]"))
    return "; ".join(parts) + f". {result.seconds:,.1f} s."
