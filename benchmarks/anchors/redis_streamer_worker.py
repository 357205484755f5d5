"""Runs service-streamer's RedisStreamer workers: ``python -m benchmarks.anchors.redis_streamer_worker``.

Uses the library's own launcher, ``run_redis_workers_forever``, which spawns
``--workers`` processes and blocks; the harness stops the process group.
"""

from __future__ import annotations

import argparse
import os
from urllib.parse import urlsplit

from service_streamer import run_redis_workers_forever

from ..knobs import ANCHOR_MAX_WAIT, BATCH_SIZE, DEVICE_ENV, REDIS_ENV, STREAMER_PREFIX
from .streamer_model import StreamerModel, cuda_devices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    address = urlsplit(os.environ[REDIS_ENV])
    run_redis_workers_forever(
        StreamerModel,
        BATCH_SIZE,
        ANCHOR_MAX_WAIT,
        worker_num=args.workers,
        cuda_devices=cuda_devices(os.environ.get(DEVICE_ENV, "cpu")),
        redis_broker=f"{address.hostname}:{address.port}",
        prefix=STREAMER_PREFIX,
    )


if __name__ == "__main__":
    main()
