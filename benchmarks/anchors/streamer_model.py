"""The bench model as a service-streamer ``ManagedModel`` (Streamer and RedisStreamer workers).

service-streamer builds it in each spawned worker process with a GPU id (or
``None``), which the library turns into ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import os
from typing import Any

from service_streamer import ManagedModel

from ..knobs import DEVICE_ENV, MODEL_ENV
from ..models import BenchModel, build


class StreamerModel(ManagedModel):
    """Loads ``$BENCH_MODEL`` on ``$BENCH_DEVICE`` in the worker process."""

    bench: BenchModel

    def init_model(self, *args: Any, **kwargs: Any) -> None:
        # The library has masked CUDA_VISIBLE_DEVICES to this worker's GPU: it is cuda:0 here.
        device = "cuda:0" if os.environ.get(DEVICE_ENV, "cpu").startswith("cuda") else "cpu"
        self.bench = build(os.environ[MODEL_ENV], device)

    def predict(self, batch: list[Any]) -> list[Any]:
        return self.bench.predict_plain(batch)


def cuda_devices(device: str) -> tuple[int, ...] | None:
    """service-streamer's ``cuda_devices`` for one of our device strings."""
    return (int(device.partition(":")[2] or 0),) if device.startswith("cuda") else None
