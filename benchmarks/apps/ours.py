"""celery-batching: the bench model behind a ``batched`` task at default knobs (batch 64).

Workers: ``celery -A benchmarks.apps.ours worker --pool solo``; the worker
builds :class:`BenchManaged` once, on the device it resolves.
"""

from __future__ import annotations

from typing import Any

from celery_batching import ManagedModel, batched

from ..knobs import BATCH_SIZE
from ..models import BenchModel, build
from .common import make_app, model_name


class BenchManaged(ManagedModel):
    """Wraps a bench model (``model_options={"model": name}``)."""

    bench: BenchModel

    def init_model(self) -> None:
        self.bench = build(self.options["model"], self.device)

    def predict(self, batch: list[Any]) -> list[Any]:
        return self.bench.predict(batch)


app = make_app("bench_ours")
task = batched(
    app,
    model=BenchManaged,
    name=f"bench.ours.{model_name()}",
    model_options={"model": model_name()},
    max_batch_size=BATCH_SIZE,
)
