"""``pitstore import-hdf5 PATH...``: the HDF5 files of the older in-house stores (``pitstore[hdf5]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pitstore.cli import output
from pitstore.cli.common import JsonOption, RootOption, clean_errors, open_store, out_console

__all__ = ["import_hdf5"]


@clean_errors
def import_hdf5(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(
        help="HDF5 files (SYMBOL_<hash>.h5, features/<set>/symbol=S/.../data.h5) or directories of them.",
        show_default=False)],
    tz: Annotated[str | None, typer.Option(
        "--tz", help="Zone of timezone-naive timestamps, e.g. UTC (refused without it).", show_default=False)] = None,
    timeframe: Annotated[str | None, typer.Option(
        "--timeframe", help="Timeframe of the imported feature sets, e.g. 1d. Default: from their rows' spacing.",
        show_default=False)] = None,
    json_out: JsonOption = False,
    root: RootOption = None,
) -> None:
    """Import bars and feature tables from legacy pandas HDFStore files: bars are ingested as bar snapshots,
    feature tables become a feature set of kind "imported" (one version per legacy version), read with `pitstore
    get` like any other. A file holding a pickle outside pandas' own types is refused before it is opened."""
    with open_store(ctx, root, create=True) as store:
        report = store.import_hdf5(paths, tz=tz, timeframe=timeframe)
    if json_out:
        output.echo_json(report.to_dict())
        return
    out_console.print(f"imported {len(report.files):,} files", markup=False)
    if report.bars is not None:
        b = report.bars
        out_console.print(f"  bars: {b.rows:,} rows; {len(b.new_symbols):,} new symbols, {len(b.appended):,} "
                          f"appended, {len(b.restated):,} restated, {len(b.unchanged):,} unchanged", markup=False)
    for v in report.feature_sets:
        legacy = f" (legacy {v.legacy_version})" if v.legacy_version else ""
        out_console.print(f"  {v.name}@{v.version}{legacy}: {v.rows:,} rows of {v.symbols:,} symbols, "
                          f"{v.timeframe}, columns {', '.join(v.columns)}; {len(v.written):,} symbols stored now",
                          markup=False, soft_wrap=True)
