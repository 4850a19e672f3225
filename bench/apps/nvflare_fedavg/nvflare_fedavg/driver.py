"""The benchmark's hands on FLARE, run with bench/.venv-nvflare's python from this directory:

* ``export OUT --clients N --model-mb M --rounds R --stamps-dir D [--identical]``: the job, from
  FLARE's FedAvg recipe, written to OUT (``Recipe.export``);
* ``wait-clients KIT --clients N``: log in as the project admin (the startup kit KIT, mTLS)
  and wait until N clients are connected;
* ``submit KIT JOB``: log in, then submit JOB and poll its status every 0.1 s until it has
  finished. The timed part starts right before ``submit_job`` and ends when the status first
  reads ``FINISHED:...``.

Each command prints one JSON line on stdout; FLARE's own output goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any

ADMIN = "admin@bench.local"
POLL = 0.1


def export(args: argparse.Namespace) -> dict[str, Any]:
    from nvflare.fuel.utils.constants import FrameworkType
    from nvflare.recipe.fedavg import FedAvgRecipe

    from nvflare_fedavg.persistor import BenchPersistor

    recipe = FedAvgRecipe(
        name="bench-fedavg",
        min_clients=args.clients,
        num_rounds=args.rounds,
        train_script="nvflare_fedavg/client.py",
        train_args="--identical" if args.identical else "",
        framework=FrameworkType.NUMPY,
        model_persistor=BenchPersistor(model_mb=args.model_mb, stamps_dir=args.stamps_dir),
    )
    recipe.export(args.out)
    return {"job": f"{args.out}/bench-fedavg"}


def _session(kit: str) -> Any:
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    with contextlib.redirect_stdout(sys.stderr):
        return new_secure_session(ADMIN, kit, timeout=60.0)


def wait_clients(args: argparse.Namespace) -> dict[str, Any]:
    session = _session(args.kit)
    started = time.monotonic()
    try:
        while True:
            clients = [c.name for c in session.get_system_info().client_info]
            if len(clients) >= args.clients:
                return {"clients": sorted(clients), "seconds": time.monotonic() - started}
            if time.monotonic() - started > args.timeout:
                return {"error": f"{len(clients)} of {args.clients} clients after {args.timeout}s"}
            time.sleep(0.5)
    finally:
        session.close()


def submit(args: argparse.Namespace) -> dict[str, Any]:
    session = _session(args.kit)
    try:
        submitted = time.monotonic()
        job_id = session.submit_job(args.job)
        status = ""
        while not status.startswith("FINISHED"):
            if time.monotonic() - submitted > args.timeout:
                return {"job_id": job_id, "error": f"not finished after {args.timeout}s: {status}"}
            time.sleep(POLL)
            status = str(session.get_job_meta(job_id).get("status", ""))
        finished = time.monotonic()
        return {"job_id": job_id, "status": status, "submitted": submitted, "finished": finished}
    finally:
        session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else "")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("export")
    p.add_argument("out")
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--model-mb", type=float, required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--stamps-dir", required=True)
    p.add_argument("--identical", action="store_true")
    p = commands.add_parser("wait-clients")
    p.add_argument("kit")
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--timeout", type=float, default=300.0)
    p = commands.add_parser("submit")
    p.add_argument("kit")
    p.add_argument("job")
    p.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    handlers = {"export": export, "wait-clients": wait_clients, "submit": submit}
    with contextlib.redirect_stdout(sys.stderr):
        answer = handlers[args.command](args)
    print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
