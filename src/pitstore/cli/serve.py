"""Serving commands: ``materialize`` and ``warm`` (load the online tier, e.g. before the market opens)."""

from __future__ import annotations

from typing import Annotated

import typer

from pitstore.cli.common import RootOption, clean_errors, open_store, out_console, parse_symbols
from pitstore.store import Store

__all__ = ["materialize", "warm"]

SymbolsOption = Annotated[
    str | None, typer.Option("--symbols", help="Comma-separated symbols (default: all).", show_default=False)
]


@clean_errors
def materialize(
    ctx: typer.Context,
    feature_set: Annotated[str, typer.Argument(help="A feature set reference: NAME or NAME@VERSION.")],
    symbols: SymbolsOption = None,
    root: RootOption = None,
) -> None:
    """Write the latest row of each symbol to the online tier, and the last history_days of rows to the
    history tier when postgres_url is set."""
    with open_store(ctx, root, create=False) as store:
        n = store.materialize(feature_set, parse_symbols(symbols))
    out_console.print(f"materialize {feature_set}: {n:,} latest rows written to the online tier")


@clean_errors
def warm(
    ctx: typer.Context,
    symbols: SymbolsOption = None,
    top: Annotated[int | None, typer.Option("--top", min=1, help="The N most requested symbols.",
                                            show_default=False)] = None,
    root: RootOption = None,
) -> None:
    """Load the latest vectors of every feature set's latest version into the online tier (given symbols,
    the --top N most requested ones, or all)."""
    with open_store(ctx, root, create=False) as store:
        n = store.warm(parse_symbols(symbols), top=top)
        why = "" if n else _nothing_warmed(store, top if symbols is None else None)
    out_console.print(f"warm: {n:,} rows loaded into the online tier{why}", markup=False, soft_wrap=True)


def _nothing_warmed(store: Store, top: int | None) -> str:
    """Why warm loaded no row."""
    if not store.registry.names():
        return " (no feature sets in the store: `pitstore backfill` one first)"
    if top is not None and not store.catalog.top_requested(top):
        return (" (no request history yet: --top ranks symbols by the look-ups served so far, and none were; "
                "warm --symbols A,B or all symbols without options)")
    return " (no stored feature rows for these symbols: `pitstore backfill` them first)"
