"""The ``versions`` group: ``versions list NAME`` and ``versions cleanup NAME --max-versions N [--dry-run]``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from pitstore.cli import output
from pitstore.cli.common import JsonOption, RootOption, clean_errors, open_store, out_console, print_wide

__all__ = ["versions_app"]

versions_app = typer.Typer(help="The versions of a feature set: list them, retire old ones.", no_args_is_help=True)
NameArgument = Annotated[str, typer.Argument(help="The feature set, e.g. daily_core.", show_default=False)]


def _yes_no(value: bool | None) -> str:
    return "?" if value is None else ("yes" if value else "no")


@versions_app.command("list")
@clean_errors
def list_versions(ctx: typer.Context, name: NameArgument, json_out: JsonOption = False, root: RootOption = None
                  ) -> None:
    """Each readable version of NAME: fingerprint, when it was registered, entries (live and superseded), bytes
    on disk, symbols with rows, and whether the online or history tier holds rows of it ("?": not reachable)."""
    with open_store(ctx, root, create=False) as store:
        listed = store.versions(name)
    if json_out:
        output.echo_json([v.to_dict() for v in listed])
        return
    table = Table("version", "fingerprint", "created", "entries", "bytes", "symbols", "online", "history")
    for v in listed:
        table.add_row(str(v.version), v.fingerprint[:12], v.created_at.isoformat(timespec="seconds"),
                      f"{v.entries:,}", output.human_bytes(v.bytes), f"{v.symbols:,}", _yes_no(v.online),
                      _yes_no(v.history))
    print_wide(table)


@versions_app.command("cleanup")
@clean_errors
def cleanup(
    ctx: typer.Context,
    name: NameArgument,
    max_versions: Annotated[int, typer.Option(
        "--max-versions", min=1, help="Keep the newest N versions that have stored entries; retire older ones.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would be retired; change nothing.")] = False,
    json_out: JsonOption = False,
    root: RootOption = None,
) -> None:
    """Retire the versions of NAME beyond the newest --max-versions, with their files: they stop being listed
    and reading them fails. A version a running reader holds is left alone (run it again later). Safe while
    other processes read and write the store; `gc --max-versions` does the same for every feature set."""
    with open_store(ctx, root, create=False) as store:
        report = store.cleanup_versions(name, max_versions=max_versions, dry_run=dry_run)
    if json_out:
        output.echo_json(report.to_dict())
        return
    verb = "would retire" if dry_run else "retired"
    out_console.print(f"versions cleanup of {name} {verb}: {', '.join(report.retired) or 'nothing'}", markup=False)
    out_console.print(f"  kept: {', '.join(report.kept) or 'none'}", markup=False)
    out_console.print(f"  {len(report.files):,} files, {output.human_bytes(report.bytes_freed)} freed"
                      + (" (would be)" if dry_run else ""), markup=False)
    if report.busy:
        out_console.print(f"  left alone, a reader holds them: {', '.join(report.busy)}", markup=False)
