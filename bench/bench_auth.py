"""What mTLS costs on the link: handshakes per second, and an authenticated call next to TLS-only.

Run ``.venv/bin/python bench/bench_auth.py`` (or ``make bench``); ``--json`` prints JSON instead
of the table. Two real links run as subprocesses on 127.0.0.1 (ports chosen by the OS), with the
test PKI and their databases in a temporary directory:

* ``mtls``: ``--ssl-require-client-auth --ssl-crl-file`` (the CRL revokes one other node, so
  the per-call CRL lookup has something to look in);
* ``tls-only``: server TLS only, no client certificate asked for or presented.

Figures:

1. Handshakes: each one is a new channel (its own subchannel, so a new TCP and TLS connection
   presenting the client certificate, no session resumption) plus one ActivateNode call, then
   the channel is closed. Run sequentially, then from a few threads at once, on both links
   in alternating rounds (the TLS-only rows show what the client certificate adds).
2. Heartbeat: one long-lived channel per link, one session, then the same Heartbeat call many
   times, in alternating rounds (mTLS, TLS-only, TLS-only, mTLS, ...) so that machine noise
   hits both alike. The ratio mTLS / TLS-only is what the authenticator adds per call; the
   link's own CPU time per call (Linux: the schedstat of its threads) is shown beside it,
   as it is less disturbed by the client sharing the machine.
3. ``MtlsAuthenticator.authenticate`` alone in this process, cached (what every call pays,
   with and without a CRL) and uncached (the first call of a certificate), to split figure 2.
4. Throughput under concurrency: several channels, each its own TCP + TLS connection and its
   own node (its own certificate on the mTLS link, its own key on the EC-key listener, its own
   session on the TLS-only link), each with several Heartbeat calls in flight from one
   grpc.aio event loop, in rounds alternating between the links: calls per second, latency
   under that load, and the link's CPU time per call. The ratio mTLS / TLS-only of calls per
   second is what the authenticator costs a busy link.

It only prints figures; nothing here asserts on timings. See docs/performance.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import grpc
from harness import BenchError
from harness.auth import (
    DEFAULT_CALLS,
    DEFAULT_CHANNELS,
    DEFAULT_DEPTH,
    DEFAULT_HANDSHAKES,
    DEFAULT_THREADS,
    HANDSHAKE_ROUNDS,
    HEARTBEAT_ROUNDS,
    THROUGHPUT_ROUNDS,
    bench_authenticator,
    bench_handshakes,
    bench_heartbeats,
    bench_throughput,
    link_targets,
    make_pki,
    split,
    start_links,
    stop_links,
    throughput_ratio,
)
from harness.cli import Workspace, base_parser, finish, positive, run_main
from harness.results import envelope
from harness.tables import markdown_table

from flwrmtls.errors import FlwrmtlsError
from flwrmtls.wire.credentials import load_tls_identity

QUICK_HANDSHAKES = 20
QUICK_CALLS = 200


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} us"


def _label(link: str) -> str:
    return {
        "mtls": "mTLS (client cert + CRL)",
        "ec-key": "EC-key P-384 (same link)",
        "tls-only": "TLS-only (no client cert)",
    }[link]


def render_auth(result: dict[str, Any]) -> str:
    machine = result["machine"]
    config = result["config"]
    lines = [
        "flwrmtls auth benchmark",
        f"  {result['date']}, flwrmtls {machine['flwrmtls']} at {result['revision']}; load "
        f"average at the start {result['loadavg_start']:.2f}",
        f"  Python {machine['python']} ({machine['implementation']}), grpcio {machine['grpcio']}, "
        f"cryptography {machine['cryptography']} ({machine['openssl']})",
        f"  {machine['cpu_count']} CPUs ({machine['cpus_usable']} usable)"
        + (f", {machine['cpu_model']}" if machine["cpu_model"] else "")
        + f"; {machine['platform']}",
        f"  links: subprocesses on 127.0.0.1; client in this process; "
        f"per link: {config['handshakes']} handshakes per row ({config['handshake_rounds']} "
        f"rounds), {config['calls']} heartbeats ({config['heartbeat_rounds']} rounds); "
        "rounds alternate between the links",
        "",
        "1. Handshakes: new channel (TCP + TLS) + ActivateNode + close",
        "",
    ]
    rows = [
        [
            _label(row["link"]),
            str(row["threads"]),
            f"{s['per_second']:.1f}",
            f"{s['p50_ms']:.2f}",
            f"{s['p99_ms']:.2f}",
            f"{s['max_ms']:.2f}",
        ]
        for row in result["handshakes"]
        for s in [row["summary"]]
    ]
    header = ["link", "threads", "handshakes/s", "p50 ms", "p99 ms", "max ms"]
    lines += [*markdown_table(header, rows, left=1), ""]
    lines += ["2. Heartbeat on one long-lived channel (per call)", ""]
    rows = [
        [
            _label(row["link"]),
            str(s["count"]),
            f"{s['mean_ms'] * 1000:.0f} us",
            f"{s['p50_ms'] * 1000:.0f} us",
            f"{s['p99_ms'] * 1000:.0f} us",
            f"{s['per_second']:.0f}",
            _us(row["link_cpu_us_per_call"]),
        ]
        for row in result["heartbeat"]
        for s in [row["summary"]]
    ]
    header = ["link", "calls", "mean", "p50", "p99", "calls/s", "link CPU/call"]
    lines += [*markdown_table(header, rows, left=1), ""]
    ratio = result["heartbeat_ratio"]
    lines.append(
        f"  mTLS / TLS-only: mean x{ratio['mean']:.3f}, p50 x{ratio['p50']:.3f}, "
        f"p99 x{ratio['p99']:.3f}; difference per call: mean {ratio['mean_difference_us']:+.0f} "
        f"us, p50 {ratio['p50_difference_us']:+.0f} us"
        + (
            ""
            if ratio["link_cpu_difference_us"] is None
            else f", link CPU {ratio['link_cpu_difference_us']:+.1f} us"
        )
    )
    lines.append(
        f"  EC-key / mTLS (same link): p50 x{ratio['ec_key_over_mtls_p50']:.3f}, "
        f"{ratio['ec_key_p50_difference_us']:+.0f} us per call (the node signs, the link verifies)"
    )
    lines += ["", "3. The authenticators alone (this process, hot loop)", ""]
    rows = [
        [row["case"], str(row["calls"]), f"{row['us_per_call']:.1f} us"]
        for row in result["authenticator"]
    ]
    lines += markdown_table(["case", "calls", "per call"], rows, left=1)
    lines += ["", render_throughput(result["throughput"], result["throughput_ratio"], 4)]
    if "elapsed_seconds" in result:
        lines += ["", f"total time {result['elapsed_seconds']:.1f} s"]
    return "\n".join(lines)


def render_throughput(rows: Sequence[dict[str, Any]], ratio: dict[str, Any], number: int) -> str:
    first = rows[0]
    lines = [
        f"{number}. Heartbeat throughput: {first['channels']} channels (own connection, own "
        f"node) x {first['depth']} calls in flight, one grpc.aio loop in this process",
        "",
    ]
    cells = [
        [
            _label(row["link"]),
            str(s["count"]),
            f"{s['per_second']:.0f}",
            f"{s['p50_ms']:.2f} ms",
            f"{s['p99_ms']:.2f} ms",
            _us(row["link_cpu_us_per_call"]),
        ]
        for row in rows
        for s in [row["summary"]]
    ]
    header = ["link", "calls", "calls/s", "p50", "p99", "link CPU/call"]
    lines += [*markdown_table(header, cells, left=1), ""]
    cpu_text = (
        "" if ratio["mtls_link_cpu"] is None else f", link CPU/call x{ratio['mtls_link_cpu']:.3f}"
    )
    lines.append(
        f"  mTLS / TLS-only: calls/s x{ratio['mtls_calls_per_second']:.3f}, "
        f"p50 x{ratio['mtls_p50']:.3f}, p99 x{ratio['mtls_p99']:.3f}{cpu_text}"
    )
    lines.append(
        f"  EC-key / TLS-only: calls/s x{ratio['ec_key_calls_per_second']:.3f}, "
        f"p50 x{ratio['ec_key_p50']:.3f}, p99 x{ratio['ec_key_p99']:.3f}"
    )
    return "\n".join(lines)


def measure_auth(args: argparse.Namespace, space: Workspace) -> dict[str, Any]:
    work = space.path
    throughput_calls = args.throughput_calls or 2 * args.calls
    config = {
        "handshakes": args.handshakes,
        "calls": args.calls,
        "threads": args.threads,
        "channels": args.channels,
        "depth": args.depth,
        "throughput_calls": throughput_calls,
        "throughput_rounds": len(split(throughput_calls, THROUGHPUT_ROUNDS)),
        "heartbeat_rounds": len(split(args.calls, HEARTBEAT_ROUNDS)),
        "handshake_rounds": len(split(args.handshakes, HANDSHAKE_ROUNDS)),
    }
    result = envelope("bench_auth", config)
    pki = make_pki(work / "pki", throughput_nodes=args.channels)
    node_chain, node_key = pki.paths("node-1")
    identity = load_tls_identity(node_chain, node_key, cert_flag="node-1", key_flag="node-1")
    links = start_links(pki, work, space.env)
    try:
        mtls, ec_key, tls_only = link_targets(pki, links, identity)
        # Heartbeats first, while each link's table holds only the benchmark's own node.
        heartbeat = bench_heartbeats([mtls, ec_key, tls_only], args.calls)
        throughput = bench_throughput(
            [mtls, ec_key, tls_only], pki, channels=args.channels, depth=args.depth,
            calls=throughput_calls,
        )  # fmt: skip
        handshakes = [
            row
            for threads in (1, args.threads)
            for row in bench_handshakes([mtls, tls_only], args.handshakes, threads)
        ]
    except (FlwrmtlsError, grpc.RpcError) as error:
        tails = "\n".join(f"--- {name} log:\n{link.log[-2000:]}" for name, link in links.items())
        raise BenchError(f"{error}\n{tails}") from None
    finally:
        stop_links(links)
    authenticator = bench_authenticator(pki, "node-1", args.calls * 5)
    by_link = {row.link: row for row in heartbeat}
    m, t = by_link["mtls"].summary, by_link["tls-only"].summary
    k = by_link["ec-key"].summary
    m_cpu, t_cpu = by_link["mtls"].link_cpu_us_per_call, by_link["tls-only"].link_cpu_us_per_call
    return {
        **result,
        "handshakes": [asdict(row) for row in handshakes],
        "heartbeat": [asdict(row) for row in heartbeat],
        "throughput": [asdict(row) for row in throughput],
        "throughput_ratio": throughput_ratio(throughput),
        "authenticator": [asdict(row) for row in authenticator],
        "heartbeat_ratio": {
            "mean": m.mean_ms / t.mean_ms,
            "p50": m.p50_ms / t.p50_ms,
            "p99": m.p99_ms / t.p99_ms,
            "mean_difference_us": (m.mean_ms - t.mean_ms) * 1000,
            "p50_difference_us": (m.p50_ms - t.p50_ms) * 1000,
            "link_cpu": None if m_cpu is None or t_cpu is None else m_cpu / t_cpu,
            "link_cpu_difference_us": None if m_cpu is None or t_cpu is None else m_cpu - t_cpu,
            "ec_key_over_mtls_p50": k.p50_ms / m.p50_ms,
            "ec_key_p50_difference_us": (k.p50_ms - m.p50_ms) * 1000,
        },
    }


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__)
    p.add_argument(
        "--handshakes",
        type=positive,
        help=f"handshakes per row (default {DEFAULT_HANDSHAKES}, quick {QUICK_HANDSHAKES})",
    )
    p.add_argument(
        "--calls",
        type=positive,
        help=f"measured heartbeats per link (default {DEFAULT_CALLS}, quick {QUICK_CALLS})",
    )
    p.add_argument(
        "--threads",
        type=positive,
        default=DEFAULT_THREADS,
        help=f"threads for the concurrent handshake row (default {DEFAULT_THREADS})",
    )
    p.add_argument(
        "--channels",
        type=positive,
        default=DEFAULT_CHANNELS,
        help=f"throughput: channels (connections, nodes) per link (default {DEFAULT_CHANNELS})",
    )
    p.add_argument(
        "--depth",
        type=positive,
        default=DEFAULT_DEPTH,
        help=f"throughput: calls in flight per channel (default {DEFAULT_DEPTH})",
    )
    p.add_argument(
        "--throughput-calls",
        type=positive,
        help="throughput: measured heartbeats per link (default: twice --calls)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.handshakes is None:
        args.handshakes = QUICK_HANDSHAKES if args.quick else DEFAULT_HANDSHAKES
    if args.calls is None:
        args.calls = QUICK_CALLS if args.quick else DEFAULT_CALLS
    return finish("bench_auth", args, lambda space: measure_auth(args, space), render_auth)


if __name__ == "__main__":
    run_main(main)
