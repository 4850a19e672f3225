"""What every benchmark's command line shares: the common flags, the working directory, the
way a benchmark ends (``SystemExit`` with one line, processes swept, files removed).

Rules: SIGTERM ends a benchmark as Ctrl-C does, so its processes and files are cleaned up;
a :class:`BenchError` becomes one line on stderr and exit status 1, no traceback; the working
directory lives under ``$TMPDIR`` and is removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import BenchError, progress
from harness.procs import TAG_VARIABLE, sweep
from harness.results import load_json, save_json

__all__ = [
    "Workspace",
    "base_parser",
    "finish",
    "positive",
    "positive_float",
    "workspace",
]


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def base_parser(doc: str | None) -> argparse.ArgumentParser:
    """``--quick``, ``--json``, ``--save FILE``, ``--from-json FILE`` and ``--keep``."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n", 1)[0] or None)
    p.add_argument("--quick", action="store_true", help="a small version, for smoke tests")
    p.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    p.add_argument("--save", type=Path, help="also write the JSON to this file")
    p.add_argument(
        "--from-json", type=Path, help="only print the tables of a JSON file --save wrote"
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the working directory (logs) and print it"
    )
    return p


@dataclass(frozen=True)
class Workspace:
    """The benchmark's temporary directory and the environment its processes get."""

    path: Path
    tag: str

    @property
    def env(self) -> dict[str, str]:
        """``FLWRMTLS_HOME`` and ``TMPDIR`` inside the directory, and the sweep tag."""
        return {
            "FLWRMTLS_HOME": str(self.path / "home"),
            "TMPDIR": str(self.path / "tmp"),
            TAG_VARIABLE: self.tag,
        }


@dataclass(frozen=True)
class _Interrupt(Exception):
    signum: int


@contextlib.contextmanager
def workspace(name: str, keep: bool) -> Iterator[Workspace]:
    """A temporary directory with ``tmp/`` and ``home/``; on the way out every process tagged
    for it is swept and (unless ``keep``) the directory removed. SIGTERM raises inside."""

    def handler(signum: int, frame: object) -> None:
        raise _Interrupt(signum)

    path = Path(tempfile.mkdtemp(prefix=f"flwrmtls-{name}-"))
    (path / "tmp").mkdir()
    space = Workspace(path, uuid.uuid4().hex)
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield space
    except _Interrupt as interrupt:
        raise SystemExit(f"{name}: stopped by signal {interrupt.signum}") from None
    except KeyboardInterrupt:
        raise SystemExit(f"{name}: interrupted") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        sweep(space.tag)
        if keep:
            progress(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def finish(
    name: str,
    args: argparse.Namespace,
    measure: Callable[[Workspace], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
) -> int:
    """The common ``main``: print a saved result (``--from-json``), or measure in a workspace,
    save (``--save``), print JSON (``--json``) or the tables. A :class:`BenchError` is one
    line and exit status 1; so is a result marked ``failed`` (printed all the same)."""
    if args.from_json is not None:
        print(render(load_json(args.from_json)))
        return 0
    started = time.monotonic()
    try:
        with workspace(name, args.keep) as space:
            result = measure(space)
    except BenchError as error:
        text = str(error)
        first, _, rest = text.partition("\n")
        if rest:
            progress(rest)
        print(f"{name}: {first}", file=sys.stderr)
        return 1
    result["elapsed_seconds"] = time.monotonic() - started
    if args.save is not None:
        save_json(args.save, result)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 1 if result.get("failed") else 0


def run_main(main: Callable[[Sequence[str] | None], int]) -> None:
    """``sys.exit(main(sys.argv[1:]))``."""
    sys.exit(main(sys.argv[1:]))
