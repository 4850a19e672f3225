"""``flwrmtls run``, ``ls``, ``log`` and ``stop``: runs on the link."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from flwrmtls.app.appfiles import AppFiles, select_app_files
from flwrmtls.app.bundle import bundle_hash, merge_run_config, read_app_config
from flwrmtls.app.bundling import build_bundle
from flwrmtls.app.components import check_component
from flwrmtls.app.runresult import ResultError, check_result
from flwrmtls.cli.output import OutputFormat, emit, format_time, printable
from flwrmtls.cli.params import ConnectionArgument, FormatOption, RunIdArgument
from flwrmtls.connectionprofiles import ConfigFile
from flwrmtls.control.client import ControlClient
from flwrmtls.errors import InputError, LinkUnreachable, Refused
from flwrmtls.keyvalues import parse_key_values
from flwrmtls.proto import control_pb2

__all__ = ["log", "ls", "run", "stop"]


def _client(connection: str | None) -> ControlClient:
    config = ConfigFile()
    return ControlClient(config.profile(connection), str(config.path))


def _print_entry(entry: control_pb2.LogEntry) -> None:
    if not entry.text:
        return
    stamp = datetime.fromtimestamp(entry.timestamp, UTC).strftime("%H:%M:%S")
    text = printable(entry.text, keep_newlines=True)  # a ClientApp's traceback is multi-line
    typer.echo(f"{stamp} {printable(entry.source)}: {text}")


def _print_entry_json(entry: control_pb2.LogEntry) -> None:
    record = {"seq": entry.seq, "timestamp": entry.timestamp, "source": entry.source}
    if entry.run_status:
        record["run_status"] = entry.run_status
    else:
        record["text"] = entry.text
    typer.echo(json.dumps(record, sort_keys=True))


def _follow(
    client: ControlClient,
    run_id: int,
    printer: Callable[[control_pb2.LogEntry], None] = _print_entry,
) -> None:
    """Print a run's logs until it ends; raise Refused unless it completed, LinkUnreachable
    if the link goes away first (the run's recorded end is on the link once it is back)."""
    status = ""
    try:
        for entry in client.stream_logs(run_id, follow=True):
            printer(entry)
            status = entry.run_status or status
    except LinkUnreachable as error:
        raise LinkUnreachable(
            f"{error}; once the link is back, `flwrmtls log {run_id} --stream` follows run "
            f"{run_id} to its recorded end"
        ) from None
    if status != "completed":
        [record] = client.list_runs(run_id)
        reason = f": {record.reason}" if record.reason else ""
        raise Refused(f"run {run_id} {record.status}{reason}")


_LEFT_OUT_SHOWN = 20
"""The most left-out paths ``run --dry-run`` names in a table (JSON lists them all)."""


def _summary(files: AppFiles, bundle: bytes) -> str:
    count = len(files.files)
    return (
        f"bundle: {count} file{'s' if count != 1 else ''}, {files.total_bytes:,} bytes "
        f"({len(bundle):,} compressed), sha256:{bundle_hash(bundle)[:16]}..."
    )


def _print_dry_run(app_dir: Path, files: AppFiles, bundle: bytes, fmt: OutputFormat) -> None:
    if fmt is OutputFormat.JSON:
        typer.echo(
            json.dumps(
                {
                    "files": [{"path": f.name, "bytes": len(f.data)} for f in files.files],
                    "left_out": [{"path": x.name, "reason": x.reason} for x in files.left_out],
                    "bytes": files.total_bytes,
                    "compressed_bytes": len(bundle),
                    "bundle_hash": bundle_hash(bundle),
                },
                indent=2,
            )
        )
        return
    typer.echo(f"would bundle from {printable(str(app_dir))}:")
    width = max((len(f.name) for f in files.files), default=0)
    for file in files.files:
        typer.echo(f"  {printable(file.name).ljust(width)}  {len(file.data):>10,}")
    if files.left_out:
        typer.echo("left out:")
        for left in files.left_out[:_LEFT_OUT_SHOWN]:
            typer.echo(f"  {printable(left.name)}  ({printable(left.reason)})")
        if len(files.left_out) > _LEFT_OUT_SHOWN:
            typer.echo(f"  ... and {len(files.left_out) - _LEFT_OUT_SHOWN} more")
    typer.echo(f"{_summary(files, bundle)}; nothing was sent (--dry-run)")


def _app_directory(app_dir: Path) -> Path:
    """``app_dir`` if it is a directory; else one line saying what to give instead."""
    if app_dir.is_dir():
        return app_dir
    if app_dir.name == "pyproject.toml" and app_dir.is_file():
        raise InputError(
            f"give the app's directory, not its pyproject.toml: flwrmtls run {app_dir.parent}"
        )
    if app_dir.exists():
        raise InputError(f"{app_dir} is not a directory: give the app's directory")
    raise InputError(f"no directory {app_dir}: give the app's directory (flwrmtls new makes one)")


def run(
    app_dir: Annotated[
        Path,
        typer.Argument(metavar="APP_DIR", help="The app's directory.", show_default=True),
    ] = Path("."),
    connection: ConnectionArgument = None,
    stream: Annotated[
        bool, typer.Option("--stream", help="Follow the run's logs to its end.")
    ] = False,
    run_config: Annotated[
        list[str] | None,
        typer.Option(
            "--run-config",
            metavar="'KEY=VALUE ...'",
            help="Override the app's config; may be given several times, later keys winning.",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="List the files the bundle would hold (and those left out) without "
            "contacting the link.",
        ),
    ] = False,
    format: FormatOption = OutputFormat.TABLE,
) -> None:
    """Bundle an app and start a run.

    Bundles the app's sources and configs (see docs/apps.md), starts a run on the link and
    prints its id. A file holding a private key, or a component pyproject.toml names that
    does not exist, stops the run before anything is sent.
    """
    app_dir = _app_directory(app_dir)
    app = read_app_config(app_dir)
    overrides = {}
    for text in run_config or ():
        overrides.update(parse_key_values(text, "--run-config"))
    merge_run_config(app.default_config, overrides)  # refuse unknown keys before sending
    files = select_app_files(app_dir)
    sources = {file.name: file.data for file in files.files}
    where = str(app_dir / "pyproject.toml")
    check_component("serverapp", app.serverapp, sources, where)
    check_component("clientapp", app.clientapp, sources, where)
    bundle = build_bundle(app_dir, files)
    if dry_run:
        _print_dry_run(app_dir, files, bundle, format)
        return
    digest = bundle_hash(bundle)
    if format is OutputFormat.TABLE:
        typer.echo(_summary(files, bundle))
    client = _client(connection)
    try:
        run_id = client.start_run(bundle, digest, overrides)
        if format is OutputFormat.JSON:
            typer.echo(
                json.dumps(
                    {
                        "run_id": run_id,
                        "bundle_hash": digest,
                        "bundle_files": len(files.files),
                        "bundle_bytes": files.total_bytes,
                    }
                )
            )
        else:
            typer.echo(
                f"run {run_id} started: {printable(app.name)} {printable(app.version)} "
                f"(bundle sha256:{digest[:16]}...)"
            )
        if stream:
            _follow(
                client, run_id, _print_entry if format is OutputFormat.TABLE else _print_entry_json
            )
    finally:
        client.close()


def _result(stored: str) -> tuple[object, str | None]:
    """A stored run result for ``ls --format json``: the value, or None and why it is not
    shown (a result an older link kept unchecked)."""
    if not stored:
        return None, None
    try:
        return json.loads(check_result(stored)), None
    except ResultError as error:
        return None, f"the stored result is not shown: {error}"


def ls(
    connection: ConnectionArgument = None,
    run_id: Annotated[
        int | None,
        typer.Option(
            "--run-id", metavar="RUN_ID", help="Only this run.", min=1, show_default=False
        ),
    ] = None,
    format: FormatOption = OutputFormat.TABLE,
) -> None:
    """Runs and their status."""
    client = _client(connection)
    try:
        runs = client.list_runs(run_id or 0)
    finally:
        client.close()
    if format is OutputFormat.TABLE:  # the table shows no config or result: parse neither
        rows = [
            [str(r.run_id), f"{r.app_name} {r.app_version}", r.status, r.owner,
             format_time(r.created_at), r.reason[:60]]
            for r in runs
        ]  # fmt: skip
        emit(format, [], ["RUN ID", "APP", "STATUS", "OWNER", "CREATED", "REASON"], rows)
        return
    data = []
    for r in runs:
        result, result_error = _result(r.result_json)
        record = {
            "run_id": r.run_id, "app": r.app_name, "version": r.app_version, "status": r.status,
            "reason": r.reason, "owner": r.owner, "created_at": format_time(r.created_at),
            "finished_at": format_time(r.finished_at) if r.finished_at else None,
            "bundle_hash": r.bundle_hash, "run_config": _run_config(r.run_config_json),
            "result": result,
        }  # fmt: skip
        if result_error is not None:
            record["result_error"] = result_error
        data.append(record)
    emit(format, data, [], [])


def _run_config(stored: str) -> object:
    """A run's config as the link stored it (its own JSON; a TOML nan or inf shown as the
    string "NaN" or "Infinity", as run results write them); None if it does not parse."""
    try:
        return json.loads(stored or "{}", parse_constant=lambda token: token)
    except (ValueError, RecursionError):
        return None


def log(
    run_id: RunIdArgument,
    connection: ConnectionArgument = None,
    stream: Annotated[bool, typer.Option("--stream", help="Follow until the run ends.")] = False,
    format: FormatOption = OutputFormat.TABLE,
) -> None:
    """A run's logs.

    With --format json: one JSON object per entry, per line.
    """
    client = _client(connection)
    printer = _print_entry if format is OutputFormat.TABLE else _print_entry_json
    try:
        if stream:
            _follow(client, run_id, printer)
        else:
            for entry in client.stream_logs(run_id, follow=False):
                printer(entry)
    finally:
        client.close()


def stop(
    run_id: RunIdArgument,
    connection: ConnectionArgument = None,
    format: FormatOption = OutputFormat.TABLE,
) -> None:
    """Stop a run: its ServerApp and ClientApps stop, its tokens end."""
    client = _client(connection)
    try:
        status = client.stop_run(run_id)
    finally:
        client.close()
    if format is OutputFormat.JSON:
        typer.echo(json.dumps({"run_id": run_id, "status": status}))
    else:
        typer.echo(f"run {run_id} {printable(status)}")
