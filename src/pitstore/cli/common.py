"""What every command shares: the store root, clean errors, and parsing of command-line values."""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import polars as pl
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from pitstore.config import Settings
from pitstore.errors import ConfigError, InvalidInputError, NotFoundError, PitstoreError
from pitstore.features.base import FeatureSet
from pitstore.features.library import standard_features
from pitstore.store import Store
from pitstore.timeutil import utc

__all__ = [
    "USER_ERRORS",
    "JsonOption",
    "RootOption",
    "clean_errors",
    "err_console",
    "fail",
    "load_feature_set",
    "load_object",
    "open_store",
    "out_console",
    "parse_mapping",
    "parse_symbols",
    "parse_time",
    "print_wide",
    "resolve_root",
    "symbol_progress",
]

P = ParamSpec("P")
R = TypeVar("R")

RootOption = Annotated[
    Path | None,
    typer.Option(
        "--root",
        help="Store directory. Default: $PITSTORE_ROOT, else $FEATURE_STORE_PATH, else ./pitstore-data.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of text.")]

# Errors that are the user's to fix (bad input, missing or unreadable files): one red line, no traceback.
USER_ERRORS: tuple[type[Exception], ...] = (PitstoreError, OSError, pl.exceptions.PolarsError)

# Consoles resolve sys.stdout / sys.stderr when they print, so test runners that swap the streams see output.
out_console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def print_wide(renderable: Any, console: Console = out_console) -> None:
    """Print; when the console is not a terminal (a pipe, a file), at the renderable's natural width rather than
    squeezed into 80 columns."""
    if console.is_terminal:
        console.print(renderable)
    else:
        natural = console.measure(renderable, options=console.options.update_width(10_000)).maximum
        Console(file=console.file, width=max(natural, 20), highlight=False).print(renderable)


def fail(message: str) -> NoReturn:
    """Print ``message`` as one red line on stderr and exit with code 1."""
    line = " ".join(message.split())  # one line, whatever the message held
    err_console.print(Text(f"error: {line}", style="red"), soft_wrap=True)
    raise typer.Exit(1)


def clean_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn pitstore errors (and file-system or unreadable-file errors) into one red line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            fail(str(exc) or type(exc).__name__)

    return wrapper


def resolve_root(ctx: typer.Context, root: Path | None) -> Path | None:
    """The command's ``--root``, else the global one (``pitstore --root X cmd``), else None (settings decide)."""
    if root is not None:
        return root
    global_root = ctx.obj
    return global_root if isinstance(global_root, Path) else None


def open_store(ctx: typer.Context, root: Path | None, *, create: bool) -> Store:
    """Open the store; unless ``create``, a missing store is an error rather than a new empty one."""
    root = resolve_root(ctx, root)
    if not create:
        settings = Settings.load(root=root)
        if not settings.catalog_exists:
            raise NotFoundError(
                f"no store at {settings.root}: run `pitstore init` or `pitstore ingest FILE` first, or give --root"
            )
    return Store.open(root)


def parse_time(value: str | None, option: str) -> datetime | None:
    """A timezone-aware ISO 8601 timestamp from the command line, in UTC; naive ones are refused."""
    return None if value is None else utc(value, option)


def parse_symbols(value: str | None) -> list[str] | None:
    """``"A, B,C"`` -> ``["A", "B", "C"]``; None stays None (all symbols)."""
    if value is None:
        return None
    symbols = list(dict.fromkeys(s.strip() for s in value.split(",") if s.strip()))
    if not symbols:
        raise InvalidInputError(f"--symbols {value!r} names no symbol; give e.g. --symbols AAPL,MSFT")
    return symbols


def parse_mapping(values: list[str]) -> dict[str, str]:
    """``["Date=ts", "Adj Close=close"]`` -> ``{"Date": "ts", "Adj Close": "close"}`` (the last ``=`` splits)."""
    out: dict[str, str] = {}
    for value in values:
        source, sep, target = value.rpartition("=")
        if not sep or not source.strip() or not target.strip():
            raise InvalidInputError(f"--map {value!r}: expected SOURCE=COLUMN, e.g. --map Date=ts", column="--map")
        out[source.strip()] = target.strip()
    return out


def load_object(spec: str, option: str) -> Any:
    """The object named by ``module:attribute`` (the working directory is importable, as for ``python -m``)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{option} {spec!r}: expected module:attribute, e.g. mypkg.defs:daily")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{option} {spec!r}: cannot import {module_name!r}: {exc}") from exc
    finally:
        if added:
            sys.path.remove(cwd)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{option} {spec!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def load_feature_set(spec: str | None) -> FeatureSet:
    """The feature set named by ``module:attribute`` (a FeatureSet, or a function returning one).

    None means ``pitstore.standard_features()``.

    >>> load_feature_set("pitstore:standard_features").name
    'daily_core'
    """
    if spec is None:
        return standard_features()
    obj = load_object(spec, "--features")
    if callable(obj) and not isinstance(obj, FeatureSet):
        obj = obj()
    if not isinstance(obj, FeatureSet):
        raise ConfigError(f"--features {spec!r} is a {type(obj).__name__}, not a pitstore.FeatureSet")
    return obj


@contextmanager
def symbol_progress(total: int, label: str, *, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A progress bar over symbols on stderr (a terminal only); yields the ``progress`` callback of
    ``Store.backfill``."""
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("symbols"),
        TimeElapsedColumn(), console=err_console, disable=not (enabled and err_console.is_terminal),
    )
    with progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)
        # Symbols already up to date are not reported through the callback: the bar ends full regardless.
        progress.update(task, completed=total)
