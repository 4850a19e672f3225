"""Against the limits: the authenticator's cost, large models, and 1,000 nodes on one link.

Run ``.venv/bin/python bench/bench_limits.py`` (``make bench`` runs it too); ``--only auth``,
``--only large`` or ``--only scale`` picks sections, ``--quick`` a small smoke version, ``--json``
JSON instead of the tables, ``--keep`` keeps the working directory (logs). Everything runs as
real processes with real gRPC over TLS on 127.0.0.1 (ports chosen by the OS); the PKI, the
databases, the apps and every temporary file live in one directory made by
``tempfile.mkdtemp`` (under ``$TMPDIR``) and removed at the end. Key material is only ever
passed as file paths.

Sections (docs/performance.md, "Against the limits", says what each figure means):

* ``auth``: a Fleet call (Heartbeat) on a link with the mTLS authenticator, on the same link's
  EC-key listener, and on a server-TLS-only link with no authenticator (``--node-auth none``):
  latency on one channel, and throughput with several channels (each its own connection and
  node) and several calls in flight each. Prints mTLS / none for both (target: <= 5 % worse).
  The measuring code is bench_auth.py's (figures 2 and 4 there).
* ``large``: a model (default 1 GB = 10**9 bytes of float32 in 4 arrays) sent by a ServerApp to
  N nodes (default 1, 2 and 4; a new federation each) with one ``flwrmtls run``, and a
  model-sized, different update back from every node; next to it, a plain gRPC byte stream
  over TLS between processes on this machine, in the same chunk size, both directions. Prints
  MB/s (10**6 bytes per second; the definitions are in the output), the ratio to the plain
  stream (target: >= 50 %), and the link's peak RSS for each N (it should not grow with N).
* ``scale``: 1,000 simulated nodes in a few worker processes, each node its own grpc.aio
  channel, TCP + TLS connection and certificate, doing on the Fleet API what a node does
  (ActivateNode, Heartbeat at the link's interval, long-poll PullMessages, and on a message:
  GetRun, the bundle, the message's objects, a reply built with flwrmtls' own message code,
  PushMessages). Prints the time for all to connect, the link's RSS, heartbeat latency
  p50/p99, and one ``flwrmtls run`` whose ServerApp sends every node a small message and waits
  for all replies (target: link RSS <= 1 GB).

It only prints figures; nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_auth
import bench_rounds

from flwrmtls import __version__ as flwrmtls_version
from flwrmtls.errors import FlwrmtlsError
from flwrmtls.wire.credentials import load_tls_identity

SECTIONS = ("auth", "large", "scale")
AUTH_TARGET = 0.05
"""mTLS may cost at most 5 % over no authenticator (latency up, throughput down)."""

DEFAULT_AUTH_CALLS = 3000
QUICK_AUTH_CALLS = 300


class BenchError(Exception):
    """The benchmark could not measure: a process failed, or a run did not complete."""


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- auth -------------------------------------------------------------------------------------


def measure_auth(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Heartbeat latency (one channel) and throughput (channels x depth) per authenticator."""
    pki = bench_auth.make_pki(work / "pki", throughput_nodes=args.channels)
    chain, key = pki.paths("node-1")
    identity = load_tls_identity(chain, key, cert_flag="node-1", key_flag="node-1")
    links = bench_auth.start_links(pki, work)
    try:
        mtls, ec_key, tls_only = bench_auth.link_targets(pki, links, identity)
        progress(f"auth: latency, {args.auth_calls} heartbeats per link on one channel")
        latency = bench_auth.bench_heartbeats([mtls, ec_key, tls_only], args.auth_calls)
        calls = 2 * args.auth_calls
        progress(f"auth: throughput, {calls} heartbeats per link, {args.channels} x {args.depth}")
        throughput = bench_auth.bench_throughput(
            [mtls, ec_key, tls_only], pki, channels=args.channels, depth=args.depth, calls=calls
        )
    except (FlwrmtlsError, OSError) as error:
        tails = "\n".join(f"--- {name} log:\n{link.log[-2000:]}" for name, link in links.items())
        raise BenchError(f"auth: {error}\n{tails}") from None
    finally:
        bench_auth.stop_links(links)
    by_latency = {row.link: row for row in latency}
    by_throughput = {row.link: row for row in throughput}
    m, n = by_latency["mtls"], by_latency["tls-only"]
    tm, tn = by_throughput["mtls"], by_throughput["tls-only"]

    def cpu_ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a / b

    overhead = {
        # > 0: mTLS is slower / does fewer calls per second than no authenticator.
        "latency_p50": m.summary.p50_ms / n.summary.p50_ms - 1,
        "latency_mean": m.summary.mean_ms / n.summary.mean_ms - 1,
        "latency_link_cpu": _minus_one(cpu_ratio(m.link_cpu_us_per_call, n.link_cpu_us_per_call)),
        "throughput": 1 - tm.summary.per_second / tn.summary.per_second,
        "throughput_p50": tm.summary.p50_ms / tn.summary.p50_ms - 1,
        "throughput_link_cpu": _minus_one(
            cpu_ratio(tm.link_cpu_us_per_call, tn.link_cpu_us_per_call)
        ),
    }
    return {
        "latency": [asdict(row) for row in latency],
        "throughput": [asdict(row) for row in throughput],
        "mtls_over_none": overhead,
        "ratios": {
            "latency_p50_mtls_over_none": m.summary.p50_ms / n.summary.p50_ms,
            "latency_mean_mtls_over_none": m.summary.mean_ms / n.summary.mean_ms,
            "throughput_mtls_over_none": tm.summary.per_second / tn.summary.per_second,
            "throughput_ec_key_over_none": by_throughput["ec-key"].summary.per_second
            / tn.summary.per_second,
            "latency_p50_ec_key_over_none": by_latency["ec-key"].summary.p50_ms / n.summary.p50_ms,
        },
        "target": AUTH_TARGET,
        "config": {
            "latency_calls": args.auth_calls,
            "throughput_calls": calls,
            "channels": args.channels,
            "depth": args.depth,
        },
    }


def _minus_one(value: float | None) -> float | None:
    return None if value is None else value - 1


def _label(link: str) -> str:
    return {
        "mtls": "mTLS (client cert + CRL)",
        "ec-key": "EC-key P-384 (same link)",
        "tls-only": "none (server TLS only)",
    }[link]


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    first, *rest = cells
    return "  ".join(
        [first.ljust(widths[0])] + [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
    )


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.1f} %"


def render_auth(auth: dict[str, Any]) -> list[str]:
    config = auth["config"]
    lines = [
        "1. Authenticator cost: Heartbeat on the Fleet API (links: subprocesses; client: this "
        "process)",
        f"   latency: one channel, {config['latency_calls']} calls per link one after another; "
        f"throughput: {config['channels']} channels (each its own connection and node) x "
        f"{config['depth']} calls in flight, {config['throughput_calls']} calls per link; "
        "rounds alternate between the links",
    ]
    widths = [28, 10, 10, 10, 12, 10, 10, 10, 12]
    header = ["authenticator", "lat p50", "lat p99", "calls/s", "CPU/call", "load c/s",
              "load p50", "load p99", "CPU/call"]  # fmt: skip
    lines.append(_row(header, widths))
    throughput = {row["link"]: row for row in auth["throughput"]}
    for row in auth["latency"]:
        s, t = row["summary"], throughput[row["link"]]
        ts = t["summary"]
        lines.append(
            _row(
                [
                    _label(row["link"]),
                    f"{s['p50_ms'] * 1000:.0f} us",
                    f"{s['p99_ms'] * 1000:.0f} us",
                    f"{s['per_second']:.0f}",
                    _us(row["link_cpu_us_per_call"]),
                    f"{ts['per_second']:.0f}",
                    f"{ts['p50_ms']:.1f} ms",
                    f"{ts['p99_ms']:.1f} ms",
                    _us(t["link_cpu_us_per_call"]),
                ],
                widths,
            )
        )
    o = auth["mtls_over_none"]
    target = auth["target"] * 100
    lines += [
        "   (CPU/call: the link process's CPU time per call, all threads)",
        f"   mTLS over none, one channel: latency p50 {_percent(o['latency_p50'])}, mean "
        f"{_percent(o['latency_mean'])}, link CPU/call {_percent(o['latency_link_cpu'])}",
        f"   mTLS over none, under load: throughput {_percent(-o['throughput'])} calls/s, "
        f"p50 {_percent(o['throughput_p50'])}, link CPU/call {_percent(o['throughput_link_cpu'])}",
        f"   target: mTLS at most {target:.0f} % over none: latency p50 "
        f"{'met' if o['latency_p50'] <= auth['target'] else 'NOT met'}, throughput "
        f"{'met' if o['throughput'] <= auth['target'] else 'NOT met'}",
    ]
    return lines


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} us"


# --- output and main --------------------------------------------------------------------------


def revision() -> str:
    """The git revision of this checkout (``+dirty`` with uncommitted changes), or unknown."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def render(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        "flwrmtls against the limits",
        f"  {result['date']}, revision {result['revision']}; flwrmtls {machine['flwrmtls']}, "
        f"Python {machine['python']}, grpcio {machine['grpcio']}, numpy {machine['numpy']}",
        f"  {machine['cpu_count']} CPUs ({machine['cpus_usable']} usable)"
        + (f", {machine['cpu_model']}" if machine["cpu_model"] else "")
        + f", {machine['memory_gib']} GiB; {machine['platform']}",
    ]
    if "auth" in result:
        lines += ["", *render_auth(result["auth"])]
    lines += ["", f"total time {result['elapsed_seconds']:.1f} s"]
    return "\n".join(lines)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument(
        "--only",
        choices=SECTIONS,
        nargs="+",
        help="run only these sections (default: all three)",
    )
    p.add_argument("--quick", action="store_true", help="a small smoke version of each section")
    p.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    p.add_argument(
        "--keep", action="store_true", help="keep the working directory (logs) and print it"
    )
    auth = p.add_argument_group("auth")
    auth.add_argument(
        "--auth-calls",
        type=positive,
        help=f"heartbeats per link on one channel (default {DEFAULT_AUTH_CALLS}, quick "
        f"{QUICK_AUTH_CALLS}); twice as many for throughput",
    )
    auth.add_argument(
        "--channels",
        type=positive,
        default=bench_auth.DEFAULT_CHANNELS,
        help=f"throughput: channels per link (default {bench_auth.DEFAULT_CHANNELS})",
    )
    auth.add_argument(
        "--depth",
        type=positive,
        default=bench_auth.DEFAULT_DEPTH,
        help=f"throughput: calls in flight per channel (default {bench_auth.DEFAULT_DEPTH})",
    )
    return p


def apply_defaults(args: argparse.Namespace) -> None:
    quick = args.quick
    if args.auth_calls is None:
        args.auth_calls = QUICK_AUTH_CALLS if quick else DEFAULT_AUTH_CALLS


@contextlib.contextmanager
def _raise_on_sigterm() -> Iterator[None]:
    """SIGTERM ends the benchmark like Ctrl-C, so processes and files are cleaned up."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    apply_defaults(args)
    sections = args.only or list(SECTIONS)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="flwrmtls-bench-limits-"))
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "revision": revision(),
        "machine": {**bench_rounds.machine_facts(), "flwrmtls": flwrmtls_version},
        "sections": sections,
        "quick": args.quick,
    }
    try:
        with _raise_on_sigterm():
            if "auth" in sections:
                result["auth"] = measure_auth(args, work / "auth")
    except BenchError as error:
        raise SystemExit(f"bench_limits: {error}") from None
    except KeyboardInterrupt:
        raise SystemExit("bench_limits: interrupted") from None
    finally:
        if args.keep:
            progress(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result["elapsed_seconds"] = time.monotonic() - started
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))


if __name__ == "__main__":
    main(sys.argv[1:])
