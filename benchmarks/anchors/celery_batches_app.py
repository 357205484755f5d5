"""celery-batches: a ``Batches`` task flushing at 64 requests or every 0.1 s.

celery-batches hands the task a list of requests and stores nothing itself;
so that each caller's ``AsyncResult.get()`` works, the task stores one
result per request with ``app.backend.mark_as_done(request.id, ...)``, the
way its documentation shows. Prefetch is raised above ``flush_every``, as
its documentation requires, or a batch would never fill.
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_init
from celery_batches import Batches, SimpleRequest

from ..apps.common import device, make_app, model_name
from ..knobs import ANCHOR_MAX_WAIT, BATCH_SIZE, BATCHES_PREFETCH_MULTIPLIER
from ..models import BenchModel, build

app = make_app("bench_batches")
app.conf.worker_prefetch_multiplier = BATCHES_PREFETCH_MULTIPLIER
_model: list[BenchModel] = []  # filled once, when the worker starts


@worker_init.connect
def _load_model(**_: Any) -> None:
    _model.append(build(model_name(), device()))


@app.task(base=Batches, flush_every=BATCH_SIZE, flush_interval=ANCHOR_MAX_WAIT, name=f"bench.batches.{model_name()}")
def infer(requests: list[SimpleRequest]) -> None:
    """One predict for the buffered requests, then one stored result per request."""
    outputs = _model[0].predict_plain([request.args[0] for request in requests])
    for request, output in zip(requests, outputs):
        app.backend.mark_as_done(request.id, output, request=request)


task = infer
