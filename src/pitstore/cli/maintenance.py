"""Housekeeping commands: ``gc``, ``verify`` and the ``cache`` group (warm, clear, cleanup)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from pitstore.cli import output
from pitstore.cli.common import (
    RootOption,
    clean_errors,
    err_console,
    fail,
    load_feature_set,
    load_object,
    open_store,
    out_console,
    parse_symbols,
    symbol_progress,
)
from pitstore.errors import ConfigError
from pitstore.ops.housekeeping import ORPHAN_GRACE_SECONDS

__all__ = ["cache_app", "compact", "gc", "verify"]

JsonFileOption = Annotated[
    Path | None, typer.Option("--json", help="Also write the report as JSON to FILE ('-' for standard output).",
                              metavar="FILE", show_default=False)
]

cache_app = typer.Typer(help="The compute cache of get_or_compute: warm, clear, clean up.", no_args_is_help=True)


def _write_json(path: Path | None, data: dict[str, Any]) -> bool:
    """Write ``data`` to ``path`` (``-``: stdout); True when it went to stdout (then print nothing else)."""
    if path is None:
        return False
    if str(path) == "-":
        output.echo_json(data)
        return True
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return False


@clean_errors
def compact(
    ctx: typer.Context,
    feature_set: Annotated[str | None, typer.Argument(help="Only this feature set (default: all).",
                                                      show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would be compacted; change nothing.")] = False,
    json_file: JsonFileOption = None,
    root: RootOption = None,
) -> None:
    """Rewrite the live feature entries of each version into few large files sorted by symbol (fast cold reads
    after many incremental backfills). No answer changes, as_known_at ones included; safe while other processes
    read and write the store."""
    with open_store(ctx, root, create=False) as store:
        report = store.compact(feature_set, dry_run=dry_run)
    if _write_json(json_file, report.to_dict()):
        return
    verb = "would compact" if dry_run else "compacted"
    out_console.print(f"{verb} {', '.join(report.versions) or 'nothing'}: {report.entries:,} entries,"
                      f" {report.rows:,} rows into {len(report.files_written):,} files;"
                      f" {len(report.files_deleted):,} files deleted, {len(report.left_for_gc):,} left for gc"
                      f" (in use) in {report.seconds:.2f} s")
    if report.damaged:
        out_console.print(f"  left out, damaged (run `pitstore verify`): {', '.join(report.damaged)}")


@clean_errors
def gc(
    ctx: typer.Context,
    retention_weeks: Annotated[float, typer.Option(
        "--retention-weeks", min=0, help="Delete cached results not accessed for this many weeks.")] = 4,
    max_versions: Annotated[int | None, typer.Option(
        "--max-versions", min=1, help="Keep the stored features of only the newest N versions of each feature set.",
        show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would be deleted; change nothing.")] = False,
    grace_minutes: Annotated[float, typer.Option(
        "--grace-minutes", min=0, help="Leave unreferenced data files younger than this (a writer may be "
        "about to commit them).")] = ORPHAN_GRACE_SECONDS / 60,
    json_file: JsonFileOption = None,
    root: RootOption = None,
) -> None:
    """Delete cached results not accessed within the retention, bar snapshots and feature entries superseded
    more than the retention_days setting ago (as_known_at cannot reach them), files no catalog row refers to (left by
    crashes), catalog rows whose file is missing, and versions beyond --max-versions; then VACUUM/ANALYZE the
    catalog. Safe while other processes read and write the store."""
    with open_store(ctx, root, create=False) as store:
        report = store.gc(retention_weeks=retention_weeks, max_versions=max_versions, dry_run=dry_run,
                          orphan_grace_seconds=grace_minutes * 60)
    if _write_json(json_file, report.to_dict()):
        return
    verb = "would delete" if dry_run else "deleted"
    lines = [
        (f"{len(report.stale_entries):,} cached results not accessed for {retention_weeks:g} weeks", True),
        (f"{len(report.old_versions):,} files of versions beyond the newest {max_versions}"
         + (f" (retired: {', '.join(report.retired_versions)})" if report.retired_versions else ""), max_versions),
        (f"{len(report.superseded):,} superseded bar snapshots and feature entries older than retention_days = "
         f"{store.settings.retention_days:g}", True),
        (f"{len(report.orphan_files):,} orphan files (no catalog row)", True),
        (f"{len(report.missing_files):,} catalog rows whose file is missing", True),
    ]
    out_console.print(f"gc {verb}:")
    for text, show in lines:
        if show:
            out_console.print(f"  {text}")
    out_console.print(f"  {output.human_bytes(report.bytes_freed)} freed" + (" (would be)" if dry_run else ""))
    if report.busy:
        out_console.print(f"  {len(report.busy):,} left alone: in use by another process right now")
    if not dry_run:
        out_console.print(f"  catalog vacuumed and analysed; {report.lock_files:,} unused lock files removed")


@clean_errors
def verify(
    ctx: typer.Context,
    repair: Annotated[bool, typer.Option(
        "--repair", help="Recompute broken feature entries from the stored bars, fall back to an older intact bar "
        "snapshot, drop what cannot be rebuilt; report each.")] = False,
    features: Annotated[list[str] | None, typer.Option(
        "--features", help="With --repair: a feature set (module:attribute) whose broken entries to recompute; "
        "repeat for several. Entries of sets not given are dropped (Python code is not in the catalog).",
        show_default=False)] = None,
    json_file: JsonFileOption = None,
    root: RootOption = None,
) -> None:
    """Check every entry against the catalog (the file exists, its size and hash match); exit 1 when any is
    broken (after --repair: when any is still broken). `pitstore gc` removes rows whose file is gone; a broken
    cached result is recomputed on next use."""
    sets = [load_feature_set(spec) for spec in features or []]
    with open_store(ctx, root, create=False) as store:
        report = store.verify(repair=repair, feature_sets=sets)
    if not _write_json(json_file, report.to_dict()):
        for p in report.found if repair else report.problems:
            err_console.print(f"[red]broken[/red] {p['kind']} {p['path']}: {p['problem']}", markup=True,
                              highlight=False, soft_wrap=True)
        for label, bucket in (("repaired", report.repaired), ("dropped", report.dropped),
                              ("unrepairable", report.unrepairable)):
            for r in bucket:
                out_console.print(f"{label} {r['kind']} {r['path']} ({r['symbol']}): {r['action']}", markup=False,
                                  highlight=False, soft_wrap=True)
        state = "ok" if report.ok else f"{len(report.problems):,} broken"
        if repair and report.found:
            state = (f"{len(report.found):,} broken: {len(report.repaired):,} repaired, {len(report.dropped):,} "
                     f"dropped, {len(report.unrepairable):,} unrepairable; now " + state)
        out_console.print(f"verify: {report.checked:,} entries checked, {state}")
    if not report.ok:
        raise typer.Exit(1)


@cache_app.command("warm")
@clean_errors
def cache_warm(
    ctx: typer.Context,
    compute: Annotated[str, typer.Option(
        "--compute", help="The compute function as module:function, called as f(raw_bars, config).",
        show_default=False)],
    configs: Annotated[str, typer.Option(
        "--configs", help="A JSON list of configs (or one config object), inline or as a path to a .json file.",
        show_default=False)],
    symbols: Annotated[str | None, typer.Option(
        "--symbols", help="Comma-separated symbols. Default: every stored symbol.", show_default=False)] = None,
    root: RootOption = None,
) -> None:
    """Precompute f(bars, config) for every symbol and config into the cache (a nightly job). Stored keys are
    skipped, so an interrupted run resumes; a failing symbol is reported and the others go on."""
    fn = load_object(compute, "--compute")
    if not callable(fn):
        raise ConfigError(f"--compute {compute!r} is a {type(fn).__name__}, not a function")
    text = Path(configs).read_text() if configs.endswith(".json") else configs
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--configs is not valid JSON: {exc}") from exc
    config_list = parsed if isinstance(parsed, list) else [parsed]
    with open_store(ctx, root, create=False) as store:
        chosen = parse_symbols(symbols) or store.symbols()
        with symbol_progress(len(chosen), "warming cache") as progress:
            report = store.warm_cache(chosen, config_list, fn, progress=progress)
    out_console.print(f"cache warm: {report.computed:,} computed, {report.hits:,} already stored, "
                      f"{len(report.failed):,} failed symbols, {report.seconds:.1f} s")
    for symbol, message in report.failed.items():
        err_console.print(f"failed {symbol}: {message}", markup=False, highlight=False)
    if report.failed:
        fail(f"{len(report.failed)} symbol(s) failed")


@cache_app.command("clear")
@clean_errors
def cache_clear(
    ctx: typer.Context,
    symbol: Annotated[str | None, typer.Option("--symbol", help="Only this symbol's results.",
                                               show_default=False)] = None,
    root: RootOption = None,
) -> None:
    """Delete cached results (all, or one symbol's)."""
    with open_store(ctx, root, create=False) as store:
        n = store.clear(symbol)
    out_console.print(f"cache clear: {n:,} results deleted")


@cache_app.command("cleanup")
@clean_errors
def cache_cleanup(
    ctx: typer.Context,
    days: Annotated[float, typer.Option("--days", min=0, help="Delete results not accessed for this many days.")],
    root: RootOption = None,
) -> None:
    """Delete cached results not accessed within --days days."""
    with open_store(ctx, root, create=False) as store:
        n = store.cleanup_old_entries(days)
    out_console.print(f"cache cleanup: {n:,} results deleted")
