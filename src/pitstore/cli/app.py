"""The ``pitstore`` command: it parses, calls the Store, and formats. Nothing else happens here."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

import pitstore
from pitstore.cli import demo as _demo
from pitstore.cli import legacy, listing, maintenance, output, serve, service
from pitstore.cli import migrate as _migrate
from pitstore.cli import tier as _tier
from pitstore.cli import versions as _versions
from pitstore.cli.common import (
    USER_ERRORS,
    JsonOption,
    RootOption,
    clean_errors,
    fail,
    load_feature_set,
    open_store,
    out_console,
    parse_mapping,
    parse_symbols,
    parse_time,
    print_wide,
    resolve_root,
    symbol_progress,
)
from pitstore.config import Settings
from pitstore.sources.layout import BarLayout
from pitstore.store import Store

__all__ = ["app"]

app = typer.Typer(
    name="pitstore",
    help="pitstore: a point-in-time feature store for market data. Compute features once, serve them as of any "
    "time, never from the future.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

SymbolsOption = Annotated[
    str | None, typer.Option("--symbols", help="Comma-separated symbols, e.g. AAPL,MSFT. Default: all.",
                             show_default=False)
]
StartOption = Annotated[
    str | None, typer.Option("--start", help="Timezone-aware ISO 8601 time, e.g. 2020-01-01T00:00:00Z.",
                             show_default=False)
]
EndOption = Annotated[
    str | None, typer.Option("--end", help="Timezone-aware ISO 8601 time, e.g. 2021-01-01T00:00:00Z.",
                             show_default=False)
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pitstore {pitstore.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    root: RootOption = None,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """pitstore: a point-in-time feature store for market data.

    Compute features once and serve exactly the same values everywhere, never a value that was not knowable
    at the time asked for. Times on the command line are ISO 8601 with a timezone (2020-01-01T00:00:00Z).
    """
    ctx.obj = root


@app.command()
@clean_errors
def init(ctx: typer.Context, root: RootOption = None) -> None:
    """Create the store (its catalog) and print where it is."""
    existed = Settings.load(root=resolve_root(ctx, root)).catalog_path.is_file()
    with open_store(ctx, root, create=True) as store:
        where = store.root.resolve()
        catalog = store.settings.catalog_location
    verb = "store already exists at" if existed else "created store at"
    out_console.print(f"{verb} {where}  (catalog: {catalog})", soft_wrap=True)


@app.command()
@clean_errors
def ingest(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="Parquet or CSV files of bars: symbol, ts (with a timezone), "
                                                     "open, high, low, close, volume.", show_default=False)],
    replace_range: Annotated[bool, typer.Option(
        "--replace-range", help="Each symbol's bars replace all its stored bars between their first and last ts "
        "(stored bars in between that the file lacks are removed; the count is printed). Default: only stored "
        "bars with the same ts are replaced.")] = False,
    mapping: Annotated[list[str] | None, typer.Option(
        "--map", help="Source column = bar column, e.g. --map Date=ts --map 'Adj Close=close' (repeatable). "
        "Without it Open, HIGH, Volume, Symbol, Ticker and one Date/Timestamp/Datetime column match in any case.",
        show_default=False)] = None,
    tz: Annotated[str | None, typer.Option(
        "--tz", help="Timezone of naive timestamps, e.g. America/New_York (converted to UTC). Without it naive "
        "timestamps are refused.", show_default=False)] = None,
    close_time: Annotated[str | None, typer.Option(
        "--close-time", help="For date-only daily files: the time of day (in --tz) each date's bar closes, e.g. "
        "16:00. Required for date-only ts: a date read as midnight would leak the day's close into that day.",
        show_default=False)] = None,
    symbol: Annotated[str | None, typer.Option(
        "--symbol", help="The symbol of a one-symbol file without a symbol column.", show_default=False)] = None,
    json_out: JsonOption = False,
    root: RootOption = None,
) -> None:
    """Validate and store bars from Parquet or CSV files.

    Each file is ingested in turn, all-or-nothing per file. A bar with the same symbol and ts as a stored one
    replaces it (a restatement); other stored bars are kept unless --replace-range. CSV timestamps must carry
    an offset or Z, or --tz gives their zone; vendor layouts (Yahoo, Stooq) need at most --map, --tz,
    --close-time and --symbol.
    """
    columns = parse_mapping(mapping or [])
    BarLayout(columns, tz, close_time, symbol)  # bad options fail before any file is stored
    for path in files:  # Check every file before storing any of them.
        if not path.is_file():
            fail(f"no such file: {path}")
        if path.suffix.lower() not in (".parquet", ".pq", ".csv", ".txt"):
            fail(f"unsupported file type {path.suffix!r} for {path}: use .parquet or .csv")
    reports = []
    with open_store(ctx, root, create=True) as store:
        for i, path in enumerate(files):
            try:
                reports.append((path, store.ingest(path, replace_range=replace_range, columns=columns, tz=tz,
                                                   close_time=close_time, symbol=symbol)))
            except USER_ERRORS as exc:
                message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
                fail(message + (f" ({i} earlier file{'s' if i != 1 else ''} stored)" if i else ""))
    summary = output.merge_ingest_reports(reports)
    if json_out:
        output.echo_json(summary)
    else:
        out_console.print(output.ingest_line(summary), markup=False, soft_wrap=True)


@app.command()
@clean_errors
def backfill(
    ctx: typer.Context,
    features: Annotated[str | None, typer.Option(
        "--features", help="Feature set to compute, as module:attribute (a FeatureSet or a function returning one),"
        " e.g. mypkg.defs:daily. Default: pitstore.standard_features().", show_default=False)] = None,
    symbols: SymbolsOption = None,
    start: Annotated[str | None, typer.Option(
        "--start", help="Write rows from this time on (values still use the full history). "
        "Timezone-aware ISO 8601.", show_default=False)] = None,
    end: Annotated[str | None, typer.Option(
        "--end", help="Use bars up to this time only, as if later ones were not known yet. Timezone-aware ISO 8601.",
        show_default=False)] = None,
    json_out: JsonOption = False,
    root: RootOption = None,
) -> None:
    """Compute and store a feature set for every (or the given) symbol; only what changed is computed."""
    feature_set = load_feature_set(features)
    wanted = parse_symbols(symbols)
    t_start, t_end = parse_time(start, "--start"), parse_time(end, "--end")
    with open_store(ctx, root, create=False) as store:
        stored = store.symbols()
        unknown = [s for s in wanted if s not in set(stored)] if wanted is not None else []
        total = len(wanted) - len(unknown) if wanted is not None else len(stored)
        t0 = time.perf_counter()
        with symbol_progress(total, f"backfilling {feature_set.name}", enabled=not json_out) as progress:
            report = store.backfill(feature_set, wanted, t_start, t_end, progress=progress)
        seconds = time.perf_counter() - t0
    if json_out:
        output.echo_json(output.backfill_dict(report, seconds, unknown))
        return
    if unknown:
        out_console.print(f"warning: no stored bars for {output.symbol_list(unknown)}", style="yellow",
                          markup=False, soft_wrap=True)
    line = output.backfill_line(report, seconds)
    if not stored:
        line += " (the store has no bars yet: run `pitstore ingest FILE` first)"
    out_console.print(line, markup=False, soft_wrap=True)


@app.command()
@clean_errors
def get(
    ctx: typer.Context,
    features: Annotated[list[str], typer.Argument(
        help="Feature references: set (all its columns), set:column or set@version:column, e.g. daily_core:ret_5d.",
        show_default=False)],
    entities: Annotated[Path | None, typer.Option(
        "--entities", help="Parquet or CSV of look-ups: symbol, ts (with a timezone), any extra columns. Each row "
        "gets the features as of its ts, and a status.", show_default=False)] = None,
    symbols: SymbolsOption = None,
    start: StartOption = None,
    end: EndOption = None,
    as_known_at: Annotated[str | None, typer.Option(
        "--as-known-at", help="Replay what the store knew at this time (before later restatements). "
        "Timezone-aware ISO 8601.", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Write the whole result to this .parquet or .csv file.", show_default=False)] = None,
    json_out: JsonOption = False,
    limit: Annotated[int, typer.Option("--limit", "-n", min=0, help="Rows shown in the terminal table.")] = 20,
    root: RootOption = None,
) -> None:
    """Read features: point-in-time look-ups (--entities FILE) or the stored rows of a range (--symbols).

    Prints a table of the first rows, or writes the full result with --out, or prints JSON records with --json.
    """
    if entities is not None and (symbols is not None or start is not None or end is not None):
        fail("--entities cannot be combined with --symbols, --start or --end (the look-ups give symbols and times)")
    if entities is None and symbols is None:
        fail("give --entities FILE for point-in-time look-ups, or --symbols A,B [--start T] [--end T] for a range")
    known = parse_time(as_known_at, "--as-known-at")
    if out is not None:
        output.check_out_path(out)
    reasons: list[str] = []  # why symbols asked for have no rows
    if entities is not None:
        lookups = output.read_entities(entities)
        with open_store(ctx, root, create=False) as store:
            df = store.get_historical(lookups, features, as_known_at=known, output="polars")
    else:
        wanted, t_start, t_end = parse_symbols(symbols), parse_time(start, "--start"), parse_time(end, "--end")
        with open_store(ctx, root, create=False) as store:
            df = store.read(features, wanted, t_start, t_end, as_known_at=known)
            reasons = listing.empty_range_reasons(store, wanted, df)
    if out is not None:
        output.write_frame(df, out)
        if json_out:
            output.echo_json({"out": str(out), "rows": df.height, "columns": df.columns})
        else:
            out_console.print(f"wrote {df.height:,} rows x {df.width} columns to {out}", markup=False, soft_wrap=True)
    elif json_out:
        typer.echo(df.write_json())
    else:
        shown = min(limit, df.height)
        caption = f"{df.height:,} rows x {df.width} columns"
        if shown < df.height:
            caption += f"; first {shown} shown (--out FILE or --json for all)"
        print_wide(output.frame_table(df, limit))
        out_console.print(caption, style="dim", markup=False, soft_wrap=True)
    if not json_out:
        for reason in reasons:
            out_console.print(f"note: {reason}", style="yellow", markup=False, soft_wrap=True)


@app.command()
@clean_errors
def stats(
    ctx: typer.Context,
    json_out: JsonOption = False,
    root: RootOption = None,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh the dashboard's key figures in place until Ctrl-C."
                                        )] = False,
    url: Annotated[str | None, typer.Option("--url", help="A running server (e.g. http://127.0.0.1:8000): its "
                                            "figures, with requests, latency and errors.", show_default=False)] = None,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between refreshes (--watch).")]
    = 2.0,
    key: Annotated[str | None, typer.Option("--key", envvar="PITSTORE_API_KEY", help="A read API key for --url.",
                                            show_default=False)] = None,
) -> None:
    """Feature sets and their versions, counts of symbols, bars, feature entries and bytes on disk, and the
    compute cache's hits, misses, hit rate, compute seconds spent and saved and hashing, per symbol and in total.
    With --url or --watch: the dashboard's key figures (of a server, or of the local store)."""
    if url is not None or watch:
        _watch_stats(ctx, root, url, key, interval, watch, json_out)
        return
    with open_store(ctx, root, create=False) as store:
        data = store.stats()
        data = {"root": str(Path(data.pop("root")).resolve()), "symbols": len(store.symbols()), **data}
    if json_out:
        output.echo_json(data)
    else:
        out_console.print(output.stats_table(data))
        out_console.print(output.cache_table(data["cache"]))


def _watch_stats(ctx: typer.Context, root: Path | None, url: str | None, key: str | None, interval: float,
                 repeat: bool, json_out: bool) -> None:
    from pitstore.cli import watch as _watch
    from pitstore.server.figures import TierWatch

    with contextlib.ExitStack() as stack:
        if url is not None:
            source = url
            get: Callable[[], dict[str, Any]] = lambda: _watch.fetch_figures(url, key)  # noqa: E731
        else:
            store = stack.enter_context(open_store(ctx, root, create=False))
            source, tiers = str(store.root), TierWatch()
            get = lambda: _watch.local_figures(store, tiers)  # noqa: E731
        if repeat and not json_out:
            _watch.watch(get, source, interval, out_console)
        elif repeat:  # one JSON line per refresh
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    typer.echo(json.dumps(get(), default=str))
                    time.sleep(interval)
        elif json_out:
            output.echo_json(get())
        else:
            print_wide(_watch.render(get(), source))


@app.command()
@clean_errors
def demo(
    ctx: typer.Context,
    root: Annotated[Path | None, typer.Option(
        "--root", help="Store directory for the demo. Default: the store root (./pitstore-data or $PITSTORE_ROOT) "
        "plus /demo.", show_default=False)] = None,
    n_symbols: Annotated[int, typer.Option("--symbols", min=1, help="Number of synthetic symbols.")] = 300,
    years: Annotated[int, typer.Option("--years", min=1, help="Years of daily bars (252 a year).")] = 3,
    lookups: Annotated[int, typer.Option("--lookups", min=1, help="Point-in-time look-ups to run.")] = 100_000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic bars and look-ups.")] = 7,
) -> None:
    """Run the main job end to end on the embedded store (no server): synthetic bars, ingest, backfill of the
    standard seven features, 100,000 point-in-time look-ups, then ingest and backfill again to show that
    nothing is recomputed. Prints a sample and the time of each stage. Safe to run repeatedly."""
    where = resolve_root(ctx, root)
    if where is None:
        where = Settings.load().root / "demo"
    with Store.open(where) as store:
        ok = _demo.run(store, n_symbols=n_symbols, years=years, n_lookups=lookups, seed=seed, console=out_console)
        symbol = store.symbols()[0]
        as_of = store.bars(symbol)["ts"][-1].strftime("%Y-%m-%dT%H:%M:%SZ")
    at = Path(where).resolve()
    out_console.print(f"\nstore: {at}   (inspect it: pitstore stats --root {at})\n"
                      f"serve it over HTTP:  pitstore serve --root {at}\n"
                      f"then try:            curl 'http://127.0.0.1:8000/v1/features/{symbol}?as_of={as_of}"
                      "&features=daily_core'\n"
                      "(pitstore is .venv/bin/pitstore when the venv is not activated)", soft_wrap=True)
    if not ok:
        fail("the second pass over identical bars was not a no-op (see above): a pitstore bug")


app.command()(listing.features)
app.command()(listing.sets)
app.command()(maintenance.gc)
app.command()(maintenance.compact)
app.command()(maintenance.verify)
app.command()(_tier.tier)
app.command()(_migrate.migrate)
app.command()(serve.materialize)
app.command()(serve.warm)
app.add_typer(maintenance.cache_app, name="cache")
app.add_typer(_versions.versions_app, name="versions")
app.command("import-hdf5")(legacy.import_hdf5)
app.command()(service.serve)
app.add_typer(service.keys_app, name="keys")
