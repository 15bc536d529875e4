"""``pitstore tier``: move rows older than the window from the PostgreSQL history tier into Parquet archives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.table import Table

from pitstore.cli.common import RootOption, clean_errors, fail, open_store, print_wide
from pitstore.cli.maintenance import JsonFileOption, _write_json
from pitstore.history import tiering
from pitstore.history.recent import catalog_scope

__all__ = ["tier"]


@clean_errors
def tier(
    ctx: typer.Context,
    window_days: Annotated[float | None, typer.Option(
        "--window-days", min=0, show_default=False,
        help="Keep this many days of rows in PostgreSQL; move older ones. Default: the history_days setting.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would move; change nothing.")] = False,
    postgres_url: Annotated[str | None, typer.Option(
        "--postgres-url", help="The history tier's PostgreSQL. Default: $PITSTORE_POSTGRES_URL or pitstore.toml.",
        show_default=False)] = None,
    schema: Annotated[str, typer.Option("--schema", help="PostgreSQL schema of the history tier.")] = "pitstore",
    json_file: JsonFileOption = None,
    root: RootOption = None,
) -> None:
    """Move rows older than --window-days out of the PostgreSQL history tier into Parquet archives in the store,
    every recorded version of them. Each archive is committed to the catalog before its rows are deleted from
    PostgreSQL, so an interrupted run loses nothing; run it again to finish. Safe to run repeatedly."""
    with open_store(ctx, root, create=False) as store:
        url = postgres_url or store.settings.postgres_url
        if not url:
            fail("no PostgreSQL URL for the history tier: give --postgres-url or set PITSTORE_POSTGRES_URL")
        from pitstore.history import PostgresHistory  # psycopg: only for this command

        with PostgresHistory(url, schema=schema, scope=catalog_scope(store.catalog)) as history:
            days = store.settings.history_days if window_days is None else window_days
            report = tiering.tier(store.root, store.catalog, history, window_days=days, dry_run=dry_run,
                                  storage=store.storage)
    if _write_json(json_file, report.to_dict()):
        return
    print_wide(_table(report))


def _table(report: tiering.TierReport) -> Table:
    cutoff = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=report.cutoff)
    verb = "would move" if report.dry_run else "moved"
    table = Table(title=f"tier {verb} rows with ts before {cutoff.isoformat()}", title_justify="left", box=None,
                  pad_edge=False)
    for name in ("table", "old rows", "archived", "already archived", "deleted from PostgreSQL", "file"):
        table.add_column(name, justify="left" if name in ("table", "file") else "right")
    for t in report.tables:
        table.add_row(t.table_id, f"{t.rows_old:,}", f"{t.rows_archived:,}", f"{t.rows_already_archived:,}",
                      f"{t.rows_deleted:,}", t.path or ("(new)" if report.dry_run and t.files else "-"))
    table.add_row("total", f"{sum(t.rows_old for t in report.tables):,}", f"{report.rows_archived:,}",
                  f"{sum(t.rows_already_archived for t in report.tables):,}", f"{report.rows_deleted:,}",
                  f"{report.files:,} file{'' if report.files == 1 else 's'}", style="bold")
    table.caption = f"{len(report.tables):,} history tables, {report.seconds:.2f} s" + (
        "; dry run: nothing changed" if report.dry_run else "")
    table.caption_justify = "left"
    return table
