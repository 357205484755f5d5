"""The request loops a client process runs (client side, stdlib only).

* closed loop: ``threads`` threads each send one request, wait for it, send
  the next; so exactly ``threads`` requests are in flight. With one thread
  this is the light-load workload, with many the saturation one.
* fill / collect: send every request of the drain workload without waiting,
  then (once the harness says the workers are done) fetch every result.

Each request is recorded as (wall-clock start, latency in seconds, ok).
Issuing stops at ``deadline`` (a wall-clock time) so a slow system cannot
hold a run for minutes; the harness reports how many requests ran.
"""

from __future__ import annotations

import itertools
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from .adapters import Adapter
from .knobs import BATCH_SIZE
from .models import BenchModel


@dataclass
class Outcome:
    """What one client saw: one row per request, plus the first error text."""

    records: list[tuple[float, float, bool]] = field(default_factory=list)
    first_error: str | None = None

    def add(self, start: float, latency: float, ok: bool, error: str | None = None) -> None:
        self.records.append((start, latency, ok))
        if error is not None and self.first_error is None:
            self.first_error = error

    def as_json(self) -> dict[str, Any]:
        return {"records": self.records, "first_error": self.first_error}


def closed_loop(
    adapter: Adapter, model: BenchModel, indices: range, threads: int, deadline: float, timeout: float
) -> Outcome:
    """Send ``indices`` as requests from ``threads`` threads, one in flight each.

    A ``full_batches`` system (direct) under load runs whole batches instead;
    with one request in flight it runs ``predict([x])`` like everyone else.
    """
    if adapter.full_batches and threads > 1:
        return _full_batches(adapter, model, indices, deadline)
    outcome = Outcome()
    lock = threading.Lock()
    todo = iter(indices)

    def worker() -> None:
        while time.time() < deadline:
            with lock:
                index = next(todo, None)
            if index is None:
                return
            sample = model.sample(index)
            start, t0 = time.time(), time.perf_counter()
            try:
                ok = model.check(sample, adapter.call(sample, timeout))
                error = None if ok else f"wrong result for sample {index}"
            except Exception:  # noqa: BLE001 - a failed request is a figure, not a crash
                ok, error = False, traceback.format_exc(limit=3)
            latency = time.perf_counter() - t0
            with lock:
                outcome.add(start, latency, ok, error)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return outcome


def _full_batches(adapter: Adapter, model: BenchModel, indices: range, deadline: float) -> Outcome:
    """``direct``: whole batches of :data:`BATCH_SIZE`; each sample's latency is its batch's."""
    outcome = Outcome()
    for chunk in _chunks(indices, BATCH_SIZE):
        if time.time() >= deadline:
            break
        samples = [model.sample(i) for i in chunk]
        start, t0 = time.time(), time.perf_counter()
        outputs = adapter.call_batch(samples)
        latency = time.perf_counter() - t0
        for sample, output in zip(samples, outputs):
            ok = model.check(sample, output)
            outcome.add(start, latency, ok, None if ok else f"wrong result for {sample!r}")
    return outcome


class Drain:
    """The drain workload's client side: fill now, collect when told."""

    def __init__(self, adapter: Adapter, model: BenchModel) -> None:
        self.adapter = adapter
        self.model = model
        self.pending: list[tuple[Any, Any, float]] = []  # (sample, handle, start)

    def fill(self, indices: range, deadline: float) -> None:
        """Send every request (in-process systems may run them right here)."""
        if self.adapter.full_batches:
            for chunk in _chunks(indices, BATCH_SIZE):
                if time.time() >= deadline:
                    break
                samples = [self.model.sample(i) for i in chunk]
                start = time.time()
                self.pending += zip(samples, self.adapter.call_batch(samples), itertools.repeat(start))
            return
        for index in indices:
            if time.time() >= deadline:
                break
            sample = self.model.sample(index)
            self.pending.append((sample, self.adapter.submit(sample), time.time()))

    def collect(self, timeout: float) -> Outcome:
        """Every result, checked; latency here is from send to collection."""
        outcome = Outcome()
        for sample, handle, start in self.pending:
            try:
                output = handle if self.adapter.full_batches else self.adapter.wait(handle, timeout)
                ok = self.model.check(sample, output)
                error = None if ok else f"wrong result for {sample!r}"
            except Exception:  # noqa: BLE001
                ok, error = False, traceback.format_exc(limit=3)
            outcome.add(start, time.time() - start, ok, error)
        self.pending = []
        return outcome

    def discard(self) -> int:
        """Forget unfinished requests (the harness stopped a drain at its time limit)."""
        count, self.pending = len(self.pending), []
        return count


def _chunks(indices: range, size: int) -> list[range]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]
