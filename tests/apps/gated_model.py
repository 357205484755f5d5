"""A batched task whose model loads only when the test says so, for the probe tests.

``init_model`` announces that loading began (pushes to ``gated-model-loading``),
then blocks on the broker list ``gated-model-gate`` (BLPOP: no polling): ``ok``
loads the model, ``fail`` makes it fail to load. With ``CB_HOLD_EXIT=1`` the
worker, once shutting down, waits for ``gated-model-exit`` before it exits,
so a test can probe it after a failed load.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery, signals

from celery_batching import batched
from celery_batching.models.base import ManagedModel

BROKER = os.environ["CB_TEST_BROKER"]
# The lists the test and the worker signal each other through.
LOADING_KEY = "gated-model-loading"
GATE_KEY = "gated-model-gate"
EXIT_KEY = "gated-model-exit"
# Longest the worker waits for the test at either gate.
GATE_TIMEOUT_SECONDS = 120

app = Celery("gated_model", broker=BROKER, backend=BROKER.rsplit("/", 1)[0] + "/1")
app.conf.update(batching_metrics_addr="127.0.0.1", broker_connection_retry_on_startup=True)


class GatedModel(ManagedModel[int, int]):
    """Doubles numbers, once the test has let it load."""

    def init_model(self) -> None:
        client = redis.Redis.from_url(BROKER)
        client.rpush(LOADING_KEY, "loading")
        reply: Any = client.blpop([GATE_KEY], timeout=GATE_TIMEOUT_SECONDS)
        if reply is None or reply[1] != b"ok":
            raise RuntimeError("the weights are corrupt")

    def predict(self, batch: list[int]) -> list[int]:
        return [2 * x for x in batch]


double = batched(app, model=GatedModel, name="gated_model.double", max_batch_size=8)


@signals.worker_shutdown.connect
def hold_exit(**kwargs: Any) -> None:
    if os.environ.get("CB_HOLD_EXIT") == "1":
        redis.Redis.from_url(BROKER).blpop([EXIT_KEY], timeout=GATE_TIMEOUT_SECONDS)
