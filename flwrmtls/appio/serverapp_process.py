"""``python -m flwrmtls.appio.serverapp_process``: one run's ServerApp, started by the link.

It reads its run token from standard input, fetches and verifies the app bundle over
ServerAppIo, runs the ServerApp's main with a :class:`~flwrmtls.appio.grid.GrpcGrid`, and
reports how it went: exit 0 when main returned; otherwise SetRunResult(failed, reason) and
exit 1. Everything it prints becomes the run's log on the link.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Any

import grpc

from flwrmtls.app.bundle import load_component
from flwrmtls.app.context import Context
from flwrmtls.app.runresult import ResultError, check_result, encode_result
from flwrmtls.app.serverapp import ServerApp
from flwrmtls.app.strategy import StrategyError
from flwrmtls.appio.grid import GrpcGrid
from flwrmtls.appio.process import (
    configure_logging,
    open_channel,
    read_token,
    shared_store,
    token_metadata,
    unpack_app,
)
from flwrmtls.heap import limit_malloc_arenas
from flwrmtls.keyvalues import values_from_proto
from flwrmtls.proto import appio_pb2, appio_pb2_grpc

log = logging.getLogger("flwrmtls.serverapp")


def _result_json(outcome: Any) -> str:
    """What main returned, as the run result JSON when it is a strategy Result (metrics per
    round); a result the link would refuse is logged and not sent."""
    try:
        text = encode_result(outcome)
        return check_result(text) if text else ""
    except (ResultError, TypeError, ValueError) as error:
        log.warning("the run's result is not kept: %s", error)
        return ""


def run(address: str) -> int:
    metadata = token_metadata(read_token())
    channel = open_channel(address)
    stub = appio_pb2_grpc.ServerAppIoStub(channel)

    def report(failed: bool, reason: str, result_json: str = "") -> None:
        stub.SetRunResult(
            appio_pb2.SetRunResultRequest(failed=failed, reason=reason, result_json=result_json),
            metadata=metadata, timeout=30,
        )  # fmt: skip

    info = stub.GetRun(appio_pb2.GetAppRunRequest(), metadata=metadata, timeout=30)
    unpacked = unpack_app(stub, info.bundle_hash, metadata)
    app_dir, app = unpacked.app_dir, unpacked.config
    try:
        server_app = load_component(app_dir, app.serverapp, ServerApp)
        context = Context(
            run_id=info.run_id, node_id=0, node_config={},
            run_config=values_from_proto(info.run_config),
        )  # fmt: skip
        log.info("ServerApp %s of %s %s starting", app.serverapp, app.name, app.version)
        shared = shared_store(info.object_directory)
        log.info(
            "arrays %s",
            "through the link's object directory" if shared else "over ServerAppIo's object calls",
        )
        try:
            grid = GrpcGrid(channel, metadata, info.run_id, shared=shared)
            outcome: Any = server_app(grid, context)
        except StrategyError as error:
            log.error("run failed: %s", error)
            report(True, str(error))
            return 1
        except grpc.RpcError as error:  # e.g. over --max-run-storage: the link's own line
            reason = f"the link answered {error.code().name}: {error.details()}"
            log.error("run failed: %s", reason)
            report(True, reason)
            return 1
        except Exception as error:
            traceback.print_exc()
            report(True, f"the ServerApp raised {type(error).__name__}: {error}")
            return 1
        report(False, "", _result_json(outcome))
        return 0
    finally:
        unpacked.remove()
        channel.close()


def main() -> None:
    limit_malloc_arenas()  # see flwrmtls.heap
    configure_logging()
    parser = argparse.ArgumentParser(prog="flwrmtls.appio.serverapp_process")
    parser.add_argument("--serverappio-api-address", required=True)
    args = parser.parse_args()
    try:
        code = run(args.serverappio_api_address)
    except grpc.RpcError as error:
        print(f"ServerApp lost the link: {error.code().name}: {error.details()}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
