"""Calls a type checker must accept or reject; tests/test_typing.py runs mypy on this file.

Each line meant to be rejected ends with ``# E: <error code>``; every other line must pass.
"""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery
from celery.result import AsyncResult

from celery_batching import ManagedModel, batched

app = Celery("typing-check")


@batched(app, max_batch_size=8)
def double(batch: list[int]) -> list[int]:
    return [2 * x for x in batch]


class Lengths(ManagedModel[str, int]):
    def init_model(self) -> None:
        pass

    def predict(self, batch: list[str]) -> Sequence[int]:
        return [len(text) for text in batch]


lengths = batched(app, model=Lengths)

doubled: AsyncResult[int] = double.delay(1)
sent: AsyncResult[int] = double.apply_async((1,), expires=10)
measured: AsyncResult[int] = lengths.delay("text")
value: int = double.delay(2).get(timeout=1)

double.delay("x")  # E: arg-type
lengths.delay(3)  # E: arg-type
wrong: AsyncResult[str] = double.delay(1)  # E: assignment
