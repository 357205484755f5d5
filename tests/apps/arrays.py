"""Batched tasks returning numpy arrays and torch tensors, and ordinary twins returning ``.tolist()``."""

from __future__ import annotations

import os

import numpy as np
import torch
from celery import Celery

from celery_batching import batched

BROKER = os.environ["CB_TEST_BROKER"]
app = Celery("arrays", broker=BROKER, backend=BROKER.rsplit("/", 1)[0] + "/1")


def _features(batch: list[float]) -> np.ndarray:
    return np.asarray(batch, dtype=np.float32)[:, None] * np.asarray([0.1, 1.0, 3.0], dtype=np.float32)


@batched(app, name="b_numpy")
def b_numpy(batch: list[float]) -> np.ndarray:
    return _features(batch)


@batched(app, name="b_torch")
def b_torch(batch: list[float]) -> torch.Tensor:
    return torch.from_numpy(_features(batch)).to(torch.float16)


@batched(app, name="b_rows")
def b_rows(batch: list[float]) -> list[torch.Tensor]:
    return [torch.arange(int(x)) for x in batch]


@app.task(name="o_numpy")
def o_numpy(x: float) -> list[float]:
    return _features([x])[0].tolist()


@app.task(name="o_torch")
def o_torch(x: float) -> list[float]:
    return torch.from_numpy(_features([x])).to(torch.float16)[0].tolist()


@app.task(name="o_echo")
def o_echo(value: object) -> object:
    """A callback: gets its parent's result as its argument."""
    return value
