"""``flwrmtls run``, ``ls``, ``log`` and ``stop``: runs on the link."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from flwrmtls.app.bundle import build_bundle, bundle_hash, merge_run_config, read_app_config
from flwrmtls.cli.output import OutputFormat, emit, format_time, printable
from flwrmtls.control.client import ControlClient
from flwrmtls.errors import LinkUnreachable, Refused
from flwrmtls.keyvalues import parse_key_values
from flwrmtls.profiles import ConfigFile
from flwrmtls.proto import control_pb2

__all__ = ["log", "ls", "run", "stop"]

_Connection = Annotated[
    str | None, typer.Argument(help="connection profile (default: the default one)")
]
_Format = Annotated[OutputFormat, typer.Option("--format")]


def _client(connection: str | None) -> ControlClient:
    config = ConfigFile()
    return ControlClient(config.profile(connection), str(config.path))


def _print_entry(entry: control_pb2.LogEntry) -> None:
    if not entry.text:
        return
    stamp = datetime.fromtimestamp(entry.timestamp, UTC).strftime("%H:%M:%S")
    typer.echo(f"{stamp} {printable(entry.source)}: {printable(entry.text)}")


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


def run(
    app_dir: Annotated[Path, typer.Argument(help="the app directory")] = Path("."),
    connection: _Connection = None,
    stream: Annotated[
        bool, typer.Option("--stream", help="follow the run's logs to its end")
    ] = False,
    run_config: Annotated[
        str, typer.Option("--run-config", help="'key=value ...' overriding the app's config")
    ] = "",
    format: _Format = OutputFormat.TABLE,
) -> None:
    """Bundle the app, start a run on the link, print its id."""
    app = read_app_config(app_dir)
    overrides = parse_key_values(run_config, "--run-config")
    merge_run_config(app.default_config, overrides)  # refuse unknown keys before sending
    bundle = build_bundle(app_dir)
    digest = bundle_hash(bundle)
    client = _client(connection)
    try:
        run_id = client.start_run(bundle, digest, overrides)
        if format is OutputFormat.JSON:
            typer.echo(json.dumps({"run_id": run_id, "bundle_hash": digest}))
        else:
            typer.echo(
                f"run {run_id} started: {app.name} {app.version} (bundle sha256:{digest[:16]}...)"
            )
        if stream:
            _follow(
                client, run_id, _print_entry if format is OutputFormat.TABLE else _print_entry_json
            )
    finally:
        client.close()


def ls(
    connection: _Connection = None,
    run_id: Annotated[int, typer.Option("--run-id", help="only this run")] = 0,
    format: _Format = OutputFormat.TABLE,
) -> None:
    """Runs and their status."""
    client = _client(connection)
    try:
        runs = client.list_runs(run_id)
    finally:
        client.close()
    data = [
        {
            "run_id": r.run_id, "app": r.app_name, "version": r.app_version, "status": r.status,
            "reason": r.reason, "owner": r.owner, "created_at": format_time(r.created_at),
            "finished_at": format_time(r.finished_at) if r.finished_at else None,
            "bundle_hash": r.bundle_hash, "run_config": json.loads(r.run_config_json or "{}"),
            "result": json.loads(r.result_json) if r.result_json else None,
        }
        for r in runs
    ]  # fmt: skip
    rows = [
        [str(r.run_id), f"{r.app_name} {r.app_version}", r.status, r.owner,
         format_time(r.created_at), r.reason[:60]]
        for r in runs
    ]  # fmt: skip
    emit(format, data, ["RUN ID", "APP", "STATUS", "OWNER", "CREATED", "REASON"], rows)


def log(
    run_id: Annotated[int, typer.Argument(help="the run")],
    connection: _Connection = None,
    stream: Annotated[bool, typer.Option("--stream", help="follow until the run ends")] = False,
    format: _Format = OutputFormat.TABLE,
) -> None:
    """A run's logs (with --format json: one JSON object per entry, per line)."""
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
    run_id: Annotated[int, typer.Argument(help="the run to stop")],
    connection: _Connection = None,
    format: _Format = OutputFormat.TABLE,
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
        typer.echo(f"run {run_id} {status}")
