"""A pure-Python app for the Celery version matrix (tests/test_celery_versions.py).

It imports nothing but celery-batching and its runtime dependencies, so each
matrix venv (one Celery minor version, no torch) can run both its worker and
its clients.
"""

from __future__ import annotations

import os

from celery import Celery

from celery_batching import batched

BROKER = os.environ["CB_TEST_BROKER"]
RESULTS = BROKER.rsplit("/", 1)[0] + "/1"

app = Celery("versions", broker=BROKER, backend=RESULTS)


@batched(app, max_batch_size=64)
def echo(batch: list[int]) -> list[int]:
    """The noop model: each sample back as it came."""
    return batch


@batched(app, max_batch_size=64)
def sizes(batch: list[int]) -> list[int]:
    """Each sample's batch size: shows the worker ran them together."""
    return [len(batch)] * len(batch)


@batched(app, max_batch_size=64)
def refuse(batch: list[str]) -> list[str]:
    """Fails every batch, as a model rejecting its input would."""
    raise ValueError(f"refused {batch[0]!r}")
