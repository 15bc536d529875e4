"""``pitstore migrate``: move a store to team mode (PostgreSQL catalog + S3 data) and back, verified entry by entry."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from pitstore.cli.common import clean_errors, err_console, fail, print_wide
from pitstore.cli.maintenance import JsonFileOption, _write_json
from pitstore.cli.output import human_bytes
from pitstore.config import Settings
from pitstore.ops.migrate import MigrationReport
from pitstore.ops.migrate import migrate as _migrate

__all__ = ["migrate"]


def _opt(flag: str, text: str) -> object:
    return typer.Option(flag, help=text, show_default=False)


@clean_errors
def migrate(
    source_dir: Annotated[Path | None, _opt("--from", "The embedded store to move (its root directory); with "
                                          "--from-catalog, the source's local-state root.")] = None,
    from_catalog: Annotated[str | None, _opt("--from-catalog", "The source's PostgreSQL catalog "
                                             "(postgresql://...?schema=name): a team store.")] = None,
    from_data: Annotated[str | None, _opt("--from-data", "Where the source's data files are (s3://bucket/prefix, "
                                          "a directory). Default: its root.")] = None,
    from_options: Annotated[str | None, _opt("--from-data-options", "fsspec options of --from-data as JSON.")] = None,
    to_dir: Annotated[Path | None, _opt("--to", "The embedded store to create (a directory); with --to-catalog, "
                                        "the target's local-state root.")] = None,
    to_catalog: Annotated[str | None, _opt("--to-catalog", "The target's PostgreSQL catalog "
                                           "(postgresql://...?schema=name): an empty schema.")] = None,
    to_data: Annotated[str | None, _opt("--to-data", "Where the target's data files go (s3://bucket/prefix, a "
                                        "shared directory). Default: its root.")] = None,
    to_options: Annotated[str | None, _opt("--to-data-options", "fsspec options of --to-data as JSON, e.g. "
                                           "'{\"endpoint_url\": \"http://127.0.0.1:9000\"}'.")] = None,
    json_file: JsonFileOption = None,
) -> None:
    """Copy a store to another catalog and data location: embedded to team mode (--from DIR --to-catalog URL
    --to-data URL) or back (--from-catalog URL --from-data URL --to DIR). Every file is checked against its
    catalog row before it is copied and on the target before the row is committed; at the end every catalog
    table is compared row by row and the target verified. A broken source file is reported and not copied (exit
    code 1). Rerun an interrupted migration with the same arguments: it resumes. Stop writers first."""
    if source_dir is None and from_catalog is None:
        fail("give the source: --from DIR (embedded) or --from-catalog URL (team)")
    if to_dir is None and to_catalog is None:
        fail("give the target: --to DIR (embedded) or --to-catalog URL (team)")
    # A team side given by its catalog alone keeps its data under a temporary root: deleted at the end.
    if from_catalog is not None and from_data is None and source_dir is None:
        fail("--from-catalog needs --from-data (where the source's data files are) or --from DIR")
    if to_catalog is not None and to_data is None and to_dir is None:
        fail("--to-catalog needs --to-data (where the data files go: s3://bucket/prefix or a shared directory)")
    with _root(source_dir) as src_root, _root(to_dir) as dst_root:
        source = _settings(src_root, from_catalog, from_data, from_options)
        target = _settings(dst_root, to_catalog, to_data, to_options)
        with _progress() as progress:
            report = _migrate(source, target, progress=progress)
    if not _write_json(json_file, report.to_dict()):
        print_wide(_table(report))
    if not report.ok:
        fail("the migration is incomplete: " + "; ".join(
            [f"{len(report.corrupt)} broken source file(s) not copied (run `pitstore verify --repair` on the"
             " source, then migrate again)"] * bool(report.corrupt) + report.differences
            + [f"verify found {len(report.verify_problems)} problem(s) on the target"] * bool(report.verify_problems)))


@contextmanager
def _root(path: Path | None) -> Iterator[Path]:
    """``path``, or a temporary directory for the local state of a team store given by URL only."""
    if path is not None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="pitstore-migrate-") as tmp:
        yield Path(tmp)


def _settings(root: Path, catalog: str | None, data: str | None, options: str | None) -> Settings:
    # Exactly what the options say: PITSTORE_CATALOG_URL / PITSTORE_DATA_URL of the environment must not turn an
    # embedded side into a team one (or point both sides at one place).
    base = Settings.load(root=root, catalog_url=catalog, data_url=data, data_options=options)
    return replace(base, catalog_url=catalog, data_url=data, data_options=base.data_options if options else None)


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("files"),
                   TimeElapsedColumn(), console=err_console, disable=not err_console.is_terminal)
    tasks: dict[str, TaskID] = {}
    with bar:
        def step(kind: str, done: int, total: int) -> None:
            if kind not in tasks:
                tasks[kind] = bar.add_task(f"copy {kind}", total=total)
            bar.update(tasks[kind], completed=done)

        yield step


def _table(report: MigrationReport) -> Table:
    table = Table(title=f"migrated store {report.store_id}" + (" (resumed)" if report.resumed else ""),
                  title_justify="left", box=None, pad_edge=False)
    table.add_column("", justify="left")
    table.add_column("", justify="left")
    table.show_header = False
    table.add_row("from", report.source)
    table.add_row("to", report.target)
    kinds = ("bars", "features", "cache", "history")
    table.add_row("files copied", ", ".join(f"{report.copied.get(k, 0):,} {k}" for k in kinds))
    table.add_row("entries on target", f"{report.entries:,} ({report.rows.get('feature_set_versions', 0):,} versions,"
                  f" {report.rows.get('cache_stats', 0):,} cache statistics rows)")
    table.add_row("bytes copied", human_bytes(report.bytes_copied))
    if report.resumed:
        table.add_row("kept from the earlier run", f"{sum(report.kept.values()):,} rows")
    table.add_row("verified", f"{report.checked:,} entries, "
                  + ("every table identical" if not report.differences else "; ".join(report.differences)))
    for c in report.corrupt[:20]:
        table.add_row("[red]not copied[/red]", f"{c['kind']} {c['path']}: {c['problem']}")
    table.add_row("seconds", f"{report.seconds:.2f}")
    return table
