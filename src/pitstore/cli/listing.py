"""Listing commands: ``features`` (the catalogue of features pitstore ships) and ``sets`` (the registered feature
sets of a store, with their versions); and the reasons an answer is empty, for the commands that give one."""

from __future__ import annotations

from dataclasses import asdict
from enum import StrEnum
from typing import Annotated, Any

import polars as pl
import typer
from rich.table import Table

from pitstore.cli import output
from pitstore.cli.common import JsonOption, RootOption, clean_errors, open_store, out_console, print_wide
from pitstore.features.catalogue import list_features
from pitstore.store import Store

__all__ = ["empty_range_reasons", "features", "sets"]


class Kind(StrEnum):
    builtin = "builtin"
    talib = "talib"


@clean_errors
def features(
    kind: Annotated[Kind | None, typer.Option("--kind", help="Only built-in or only TA-Lib features.",
                                              show_default=False)] = None,
    json_out: JsonOption = False,
) -> None:
    """The catalogue: every feature pitstore ships (built-ins and TA-Lib functions), with inputs, parameters and
    their defaults, output columns and lookback. Build one with pitstore.build_feature(name, params)."""
    listed = list_features(kind.value if kind is not None else None)
    if json_out:
        output.echo_json([asdict(m) for m in listed])
        return
    table = Table("name", "kind", "group", "inputs", "params (defaults)", "outputs", "lookback", "description")
    for m in listed:
        params = ", ".join(f"{k}={v}" for k, v in m.params.items())
        table.add_row(m.name, m.kind, m.group, ", ".join(m.inputs), params, ", ".join(m.outputs), str(m.lookback),
                      m.description)
    print_wide(table)
    out_console.print(f"{len(listed)} features", style="dim")


@clean_errors
def sets(ctx: typer.Context, json_out: JsonOption = False, root: RootOption = None) -> None:
    """The feature sets registered in the store: each readable version with its fingerprint, when it was
    registered, its timeframe and columns, and how many symbols have rows stored."""
    with open_store(ctx, root, create=False) as store:
        rows = _set_rows(store)
        where = store.root.resolve()
    if json_out:
        output.echo_json(rows)
        return
    if not rows:
        out_console.print(f"no feature sets registered in {where}: `pitstore backfill` registers and computes the "
                          "standard set (or Store.register() / Store.backfill() one of your own)", markup=False,
                          soft_wrap=True)
        return
    table = Table("set", "version", "fingerprint", "registered", "timeframe", "columns", "symbols stored")
    for r in rows:
        table.add_row(r["name"], str(r["version"]), r["fingerprint"][:12], r["created_at"], r["timeframe"],
                      ", ".join(r["columns"]), f"{r['symbols']:,}")
    print_wide(table)


def _set_rows(store: Store) -> list[dict[str, Any]]:
    out = []
    for name in store.registry.names():
        for info in store.registry.versions(name):
            stored = {e.symbol for e in store.catalog.feature_entries(name, info.version)}
            out.append({"name": name, "version": info.version, "fingerprint": info.fingerprint,
                        "created_at": info.created_at.isoformat(), "timeframe": info.definition["timeframe"],
                        "columns": list(info.columns), "symbols": len(stored)})
    return out


def empty_range_reasons(store: Store, wanted: list[str] | None, df: pl.DataFrame) -> list[str]:
    """Why symbols asked for in a range read have no rows: no bars stored, or bars but no feature rows in it."""
    if wanted is None:
        return [] if df.height else ["the store has no feature rows for it: run `pitstore backfill` first"]
    answered = set(df["symbol"].to_list()) if "symbol" in df.columns else set()
    empty = [s for s in wanted if s not in answered]
    stored = set(store.symbols())
    no_bars = [s for s in empty if s not in stored]
    no_rows = [s for s in empty if s in stored]
    reasons = []
    if no_bars:
        reasons.append(f"no bars stored for {output.symbol_list(no_bars)} (unknown symbols: `pitstore ingest` them; "
                       "`pitstore stats` counts the stored ones)")
    if no_rows:
        reasons.append(f"no feature rows for {output.symbol_list(no_rows)} in this range (bars are stored: "
                       "`pitstore backfill` computes them, or widen --start/--end)")
    return reasons
