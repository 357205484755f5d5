"""A test app whose batched task answers, for each sample, what its worker was given.

The launcher tests run it with ``celery-batching workers -A tests.apps.device_app``
and check each worker's device, GPU pinning, thread settings and node name.
"""

from __future__ import annotations

import os

from celery import Celery, signals

from celery_batching import ManagedModel, batched

BROKER = os.environ["CB_TEST_BROKER"]
RESULTS = BROKER.rsplit("/", 1)[0] + "/1"

app = Celery("device_app", broker=BROKER, backend=RESULTS)

_node: dict[str, str] = {}  # this worker's node name, from celeryd_init


@signals.celeryd_init.connect
def _remember_node(sender: str | None = None, **kwargs: object) -> None:
    _node["name"] = str(sender)


class DeviceProbe(ManagedModel):
    """Reports the device the worker built it on, and the worker's environment."""

    def init_model(self) -> None:
        self.pid = os.getpid()

    def predict(self, batch: list[int]) -> list[dict]:
        return [
            {
                "sample": sample,
                "device": self.device,
                "node": _node.get("name"),
                "pid": self.pid,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                "batching_threads": os.environ.get("CELERY_BATCHING_THREADS"),
            }
            for sample in batch
        ]


probe = batched(app, model=DeviceProbe, name="probe", max_batch_size=1)
