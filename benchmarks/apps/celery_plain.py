"""Plain Celery: one ordinary task per sample, ``predict([x])`` in the worker.

Celery's defaults apart from the pool (``--pool solo``, one process per
model, as a GPU worker runs). The model loads once per worker process, when
the worker starts.
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_init

from ..models import BenchModel, build
from .common import device, make_app, model_name

app = make_app("bench_plain")
_model: list[BenchModel] = []  # filled once, when the worker starts


@worker_init.connect
def _load_model(**_: Any) -> None:
    _model.append(build(model_name(), device()))


@app.task(name=f"bench.plain.{model_name()}")
def infer(sample: Any) -> Any:
    """One sample in, one output out."""
    return _model[0].predict_plain([sample])[0]


task = infer
