"""What every benchmark Celery app shares: where Redis is, which model, one set of settings.

Both venvs import this (celery-batches' app runs on the anchors' Celery), so
it uses only Celery's public API.
"""

from __future__ import annotations

import os

from celery import Celery

from ..knobs import DEVICE_ENV, MODEL_ENV, REDIS_ENV


def model_name() -> str:
    """The bench model this process serves (``$BENCH_MODEL``)."""
    return os.environ[MODEL_ENV]


def device() -> str:
    """The device this process's model runs on (``$BENCH_DEVICE``, default cpu)."""
    return os.environ.get(DEVICE_ENV, "cpu")


def make_app(main: str) -> Celery:
    """A Celery app on the run's private Redis: broker in db 0, results in db 1."""
    url = os.environ[REDIS_ENV]
    app = Celery(main, broker=f"{url}/0", backend=f"{url}/1")
    app.conf.update(
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app
