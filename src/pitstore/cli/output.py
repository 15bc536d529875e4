"""Formatting for the terminal and JSON, and reading and writing the frames the commands take and give."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import typer
from rich import box
from rich.table import Table
from rich.text import Text

from pitstore.errors import InvalidInputError
from pitstore.frames import to_polars
from pitstore.offline.backfill import BackfillReport
from pitstore.sources.ingest import IngestReport, load_bars_source
from pitstore.sources.layout import BarLayout

__all__ = [
    "backfill_dict",
    "backfill_line",
    "check_out_path",
    "echo_json",
    "frame_table",
    "human_bytes",
    "ingest_line",
    "merge_ingest_reports",
    "read_entities",
    "stats_table",
    "symbol_list",
    "write_frame",
]

_STATUS_STYLE = {"ok": "green", "stale": "yellow", "no_data_yet": "yellow", "unknown_symbol": "red"}
_PARQUET = (".parquet", ".pq")
_CSV = (".csv",)


def echo_json(data: Any) -> None:
    """Print ``data`` as JSON on stdout (plain, so it can be piped)."""
    typer.echo(json.dumps(data, indent=2, default=str))


def symbol_list(symbols: Sequence[str], limit: int = 8) -> str:
    """``A, B, C`` or ``A, B, ... (+298 more)``."""
    shown = ", ".join(symbols[:limit])
    return shown + (f", ... (+{len(symbols) - limit} more)" if len(symbols) > limit else "")


def human_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KiB``.

    >>> human_bytes(1536), human_bytes(12)
    ('1.5 KiB', '12 B')
    """
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------------- ingest


def merge_ingest_reports(reports: Sequence[tuple[Path, IngestReport]]) -> dict[str, Any]:
    """One summary over several files, each symbol counted once by its strongest change.

    new beats restated beats appended beats unchanged: a symbol first seen in one file and extended by the
    next is new to the store.
    """
    new: dict[str, None] = {}
    restated: dict[str, int] = {}
    removed: dict[str, int] = {}
    appended: dict[str, None] = {}
    unchanged: dict[str, None] = {}
    for _, r in reports:
        new.update(dict.fromkeys(r.new_symbols))
        for s, n in r.restated.items():
            restated[s] = restated.get(s, 0) + n
        for s, n in r.removed.items():
            removed[s] = removed.get(s, 0) + n
        appended.update(dict.fromkeys(r.appended))
        unchanged.update(dict.fromkeys(r.unchanged))
    restated = {s: n for s, n in restated.items() if s not in new}
    removed = {s: n for s, n in removed.items() if s not in new}
    appended_list = [s for s in appended if s not in new and s not in restated]
    unchanged_list = [s for s in unchanged if s not in new and s not in restated and s not in appended]
    return {
        "rows": sum(r.rows for _, r in reports),
        "new_symbols": list(new),
        "appended": appended_list,
        "restated": restated,
        "removed": removed,
        "unchanged": unchanged_list,
        "files": [{"path": str(p), **asdict(r)} for p, r in reports],
    }


def ingest_line(summary: dict[str, Any]) -> str:
    """A one-paragraph text summary of :func:`merge_ingest_reports`."""
    n_files = len(summary["files"])
    restated: dict[str, int] = summary["restated"]
    removed: dict[str, int] = summary["removed"]
    lines = [
        f"ingested {summary['rows']:,} rows from {n_files} file{'s' if n_files != 1 else ''}",
        f"  new symbols: {len(summary['new_symbols'])}" + _names(summary["new_symbols"]),
        f"  appended:    {len(summary['appended'])}" + _names(summary["appended"]),
        f"  restated:    {len(restated)} ({sum(restated.values()):,} bars changed)" + _names(list(restated)),
        f"  removed:     {sum(removed.values()):,} stored bars" + _names(list(removed)),
        f"  unchanged:   {len(summary['unchanged'])}" + _names(summary["unchanged"]),
    ]
    return "\n".join(lines)


def _names(symbols: Sequence[str]) -> str:
    return f"  [{symbol_list(symbols)}]" if symbols else ""


# -------------------------------------------------------------------------------------------------- backfill


def backfill_dict(report: BackfillReport, seconds: float, unknown: Sequence[str] = ()) -> dict[str, Any]:
    """The report as JSON-ready data, with ``nothing_to_do``, the time taken and unknown symbols asked for."""
    return {**asdict(report), "nothing_to_do": report.nothing_to_do, "seconds": round(seconds, 3),
            "unknown_symbols": list(unknown)}


def backfill_line(report: BackfillReport, seconds: float) -> str:
    """What a backfill computed, or ``nothing to do: N symbols up to date``."""
    ref = f"{report.feature_set}@{report.version}"
    if report.nothing_to_do:
        n = len(report.up_to_date)
        line = f"nothing to do: {n} symbol{'s' if n != 1 else ''} up to date ({ref})"
        if report.lost_race:
            line += f"; {len(report.lost_race)} computed concurrently by another process"
        return line
    done = len(report.full) + len(report.incremental)
    parts = [
        f"backfilled {ref}: {done} symbol{'s' if done != 1 else ''} "
        f"({len(report.full)} in full, {len(report.incremental)} incremental), "
        f"{report.written_rows:,} rows written ({report.computed_rows:,} computed) in {seconds:.2f} s",
        f"  up to date already: {len(report.up_to_date)}",
    ]
    if report.lost_race:
        parts.append(f"  computed concurrently by another process: {len(report.lost_race)}")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------- get / io


def read_entities(path: Path) -> pl.DataFrame:
    """Look-ups from Parquet, or from CSV whose ``ts`` strings carry an offset or ``Z``; extra columns kept."""
    df = to_polars(load_bars_source(path, BarLayout(aliases=False)))  # the same file rules as bars
    for col in ("symbol", "ts"):
        if col not in df.columns:
            raise InvalidInputError(f"{path}: entities need a {col!r} column", column=col)
    return df


def check_out_path(path: Path) -> None:
    """Refuse an output file type we cannot write before any work is done."""
    if path.suffix.lower() not in (*_PARQUET, *_CSV):
        raise InvalidInputError(f"--out {path}: unsupported file type {path.suffix!r}; use .parquet or .csv")


def write_frame(df: pl.DataFrame, path: Path) -> None:
    """Write ``df`` to ``path`` as Parquet or CSV (by its suffix), creating parent directories."""
    check_out_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in _PARQUET:
        df.write_parquet(path)
    else:
        df.write_csv(path)


def _cell(value: Any, column: str, digits: int, timespec: str) -> Text:
    if value is None:
        return Text("null", style="dim")
    if isinstance(value, float):
        return Text("NaN" if math.isnan(value) else f"{value:.{digits}g}")
    if isinstance(value, datetime):
        return Text(value.isoformat(sep=" ", timespec=timespec).replace("+00:00", "Z"))
    if column == "status":
        return Text(str(value), style=_STATUS_STYLE.get(str(value), ""))
    return Text(str(value))


def frame_table(
    df: pl.DataFrame, limit: int, title: str | None = None, *, digits: int = 6, timespec: str = "seconds",
    compact: bool = False,
) -> Table:
    """The first ``limit`` rows of ``df`` as a rich table: floats to ``digits`` significant digits, UTC times
    with ``Z``, statuses coloured. ``compact`` drops the vertical rules to fit narrow terminals."""
    table = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD if compact else
                  box.HEAVY_HEAD, show_edge=not compact, collapse_padding=compact)
    for name, dtype in df.schema.items():
        table.add_column(name, justify="right" if dtype.is_numeric() else "left", no_wrap=True)
    for row in df.head(limit).iter_rows():
        table.add_row(*(_cell(v, c, digits, timespec) for v, c in zip(row, df.columns, strict=True)))
    return table


# ----------------------------------------------------------------------------------------------------- stats


def stats_table(stats: dict[str, Any]) -> Table:
    """``Store.stats()`` as a two-column table."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in stats.items():
        if isinstance(value, dict):
            continue  # nested sections (the cache) have tables of their own
        if key == "bytes_on_disk":
            shown = f"{human_bytes(int(value))} ({int(value):,} bytes)"
        elif isinstance(value, list):
            shown = ", ".join(map(str, value)) or "(none)"
        elif isinstance(value, int):
            shown = f"{value:,}"
        else:
            shown = str(value)
        table.add_row(key, shown)
    return table


def cache_table(cache: dict[str, Any], limit: int = 20) -> Table:
    """The compute cache section of ``Store.stats()``: totals, then the busiest symbols."""
    table = Table(title="compute cache", title_justify="left", box=None, pad_edge=False)
    for name in ("symbol", "entries", "bytes", "hits", "misses", "hit rate", "compute s", "saved s", "hash GB/s"):
        table.add_column(name, justify="left" if name == "symbol" else "right")

    def row(name: str, s: dict[str, Any], style: str | None = None) -> None:
        rate = s.get("hash_gb_per_s")
        table.add_row(name, f"{s['entries']:,}", human_bytes(int(s["bytes"])), f"{s['hits']:,}", f"{s['misses']:,}",
                      f"{s['hit_rate']:.1%}", f"{s['compute_seconds']:.2f}", f"{s['saved_seconds']:.2f}",
                      f"{rate:.1f}" if rate else "-", style=style)

    per = cache["per_symbol"]
    for symbol in sorted(per, key=lambda k: -(per[k]["hits"] + per[k]["misses"]))[:limit]:
        row(symbol, per[symbol])
    row("total", cache, style="bold")
    table.caption = (f"{len(per):,} symbols; hashed {cache['hash_bytes'] / 1e9:.2f} GB with {cache['hash_method']} in "
                     f"{cache['hash_seconds']:.2f} s; {cache['corruptions']:,} corrupted entries recomputed")
    table.caption_justify = "left"
    return table
