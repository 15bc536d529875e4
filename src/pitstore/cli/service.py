"""``pitstore serve`` (the HTTP service) and ``pitstore keys`` (its API keys)."""

from __future__ import annotations

import ipaddress
import os
import tempfile
from typing import Annotated

import typer

from pitstore.cli.common import RootOption, clean_errors, load_feature_set, out_console, resolve_root
from pitstore.config import Settings
from pitstore.errors import ConfigError, MissingDependencyError, NotFoundError, ReadOnlyStoreError

__all__ = ["keys_app", "serve"]

keys_app = typer.Typer(help="API keys of the HTTP service: stored as hashes, shown once.", no_args_is_help=True)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@clean_errors
def serve(
    ctx: typer.Context,
    root: RootOption = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Worker processes (one store each).")] = 1,
    online_url: Annotated[str | None, typer.Option("--online-url", help="Online tier, e.g. redis://127.0.0.1:6379/0"
                                                   " (default: the setting, else sqlite:// under the root).",
                                                   show_default=False)] = None,
    postgres_url: Annotated[str | None, typer.Option("--postgres-url", help="History tier (PostgreSQL).",
                                                     show_default=False)] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback address without API keys.")]
    = False,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
    features: Annotated[list[str] | None, typer.Option(
        "--features", help="module:attribute of a feature set /v1/push computes (repeatable; default: the"
        " standard set when the store holds it).", show_default=False)] = None,
) -> None:
    """Serve the store over HTTP (the /v1 API, /metrics, /healthz, /readyz, /openapi.json). SIGTERM or Ctrl-C
    stops it gracefully: requests in flight finish and pushed rows are flushed."""
    try:
        import uvicorn

        from pitstore.server.auth import KeyRing
    except ImportError as exc:
        raise MissingDependencyError(f"pitstore serve needs its extra: pip install 'pitstore[server]' ({exc})") \
            from exc
    settings = Settings.load(root=resolve_root(ctx, root), online_url=online_url, postgres_url=postgres_url)
    if not settings.catalog_exists:
        raise NotFoundError(f"no store at {settings.root}: run `pitstore demo` or `pitstore ingest FILE` first")
    keys = KeyRing.load(settings.root, settings.api_keys)
    if not keys and not _loopback(host) and not insecure:
        raise ConfigError(f"refusing to serve on {host} without API keys: create one with `pitstore keys create`"
                          " (or pass --insecure)")
    # Workers are new processes: they rebuild the same settings from the environment.
    os.environ["PITSTORE_ROOT"] = str(settings.root.resolve())
    for name, value in (("PITSTORE_ONLINE_URL", settings.online_url), ("PITSTORE_POSTGRES_URL", settings.postgres_url)):
        if value:
            os.environ[name] = value
    for spec in features or []:
        load_feature_set(spec)  # a bad spec fails here, with a clean message, not in every worker
    os.environ["PITSTORE_SERVE_FEATURES"] = ";".join(features or [])
    os.environ["PITSTORE_SERVE_WORKERS"] = str(workers)  # push needs one worker: live state is per process
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="pitstore-metrics-")
    out_console.print(f"pitstore serving {settings.root} on http://{host}:{port} ({workers} worker(s), "
                      f"{'API keys required' if keys else 'no API keys'})")
    uvicorn.run("pitstore.server.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, timeout_graceful_shutdown=30, access_log=False)


@keys_app.command("create")
@clean_errors
def create(
    ctx: typer.Context,
    scope: Annotated[str, typer.Option("--scope", help="read, write (push) or admin (invalidate).")] = "read",
    name: Annotated[str, typer.Option("--name", help="A label to recognise the key by.")] = "",
    root: RootOption = None,
) -> None:
    """Create an API key: prints it once; only its SHA-256 is stored (<root>/api_keys.json)."""
    from pitstore.server.auth import create_key

    settings = Settings.load(root=resolve_root(ctx, root))
    if not settings.root.is_dir():
        raise NotFoundError(f"no store at {settings.root}")
    if settings.refuses_writes:
        raise ReadOnlyStoreError(settings.root, "create an API key (it is stored in the root's api_keys.json)")
    typer.echo(create_key(settings.root, scope, name))


@keys_app.command("list")
@clean_errors
def list_keys(ctx: typer.Context, root: RootOption = None) -> None:
    """The configured keys: scope, name, creation time and the start of the hash (never the key)."""
    from pitstore.server.auth import KEY_FILE, read_key_file

    settings = Settings.load(root=resolve_root(ctx, root))
    for e in read_key_file(settings.root / KEY_FILE):
        out_console.print(f"{e['scope']:<6} {e['sha256'][:12]}…  {e.get('created', '')}  {e.get('name', '')}")
