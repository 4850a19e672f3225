"""The training script each FLARE client runs (Client API): client ``site-K`` adds
``1 + K/1024`` to every element (``1`` with ``--identical``) and sends the model back."""

from __future__ import annotations

import argparse

import numpy as np
import nvflare.client as flare


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--identical", action="store_true", help="every client adds 1")
    args = parser.parse_args()
    flare.init()
    site = str(flare.system_info()["site_name"])
    index = int(site.rsplit("-", 1)[1])
    add = np.float32(1.0 if args.identical else 1.0 + index / 1024)
    while flare.is_running():
        model = flare.receive()
        if model is None:
            break
        params = {key: value + add for key, value in model.params.items()}
        flare.send(
            flare.FLModel(
                params=params,
                params_type=flare.ParamsType.FULL,
                current_round=model.current_round,
                meta={"NUM_STEPS_CURRENT_ROUND": 100},
            )
        )


if __name__ == "__main__":
    main()
