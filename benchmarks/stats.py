"""Figures from raw records: throughput, percentiles, CPU per request, spreads over repetitions."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .trace import Call

# Who spent the CPU: the load generators, the model-serving processes, Redis.
CPU_PARTS = ("client", "worker", "redis")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), interpolating between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Measurement:
    """One workload, one repetition. Latencies in seconds, CPU in seconds per request."""

    requests: int = 0
    failed: int = 0
    throughput: float = math.nan  # samples per second
    p50: float = math.nan
    p99: float = math.nan
    cpu: dict[str, float] = field(default_factory=dict)
    mean_batch: float = math.nan
    capped: bool = False  # stopped at the time limit before every request ran
    first_error: str | None = None

    @property
    def cpu_total(self) -> float:
        return sum(self.cpu.values()) if self.cpu else math.nan

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def mean_batch(calls: Sequence[Call]) -> float:
    """Samples per predict call."""
    return sum(call.samples for call in calls) / len(calls) if calls else math.nan


def from_records(records: Iterable[Sequence[Any]], calls: Sequence[Call]) -> Measurement:
    """Closed-loop figures: throughput over the span from first send to last answer."""
    rows = list(records)
    if not rows:
        return Measurement()
    latencies = [row[1] for row in rows]
    span = max(start + latency for start, latency, _ in rows) - min(row[0] for row in rows)
    return Measurement(
        requests=len(rows),
        failed=sum(1 for row in rows if not row[2]),
        throughput=_rate(len(rows), span),
        p50=percentile(latencies, 50),
        p99=percentile(latencies, 99),
        mean_batch=mean_batch(calls),
    )


def from_calls(calls: Sequence[Call], released: float | None = None) -> Measurement:
    """Drain figures from the model's own log.

    ``released``: when the queue was handed to workers that were all ready;
    throughput is then every sample over that instant to the last predict end,
    so waking, claiming and uneven shares between workers all count. Without
    it (in-process systems), the span from one predict start to the next
    covers a whole cycle (predict, store the results, claim the next batch),
    so throughput is the samples of every call but the last over first start
    to last start. A drain of one call has no cycle to measure: its figure is
    that call's own rate.
    """
    if not calls:
        return Measurement()
    ordered = sorted(calls, key=lambda call: call.start)
    total = sum(call.samples for call in ordered)
    if released is not None:
        rate = _rate(total, max(call.end for call in ordered) - released)
    elif len(ordered) == 1:
        rate = _rate(total, ordered[0].end - ordered[0].start)
    else:
        rate = _rate(total - ordered[-1].samples, ordered[-1].start - ordered[0].start)
    return Measurement(requests=total, throughput=rate, mean_batch=mean_batch(ordered))


def _rate(samples: int, seconds: float) -> float:
    return samples / seconds if seconds > 0 else math.nan


def cpu_per_request(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]], requests: int
) -> dict[str, float]:
    """CPU seconds per request for each part, from per-process counters before and after."""
    if requests <= 0:
        return {}
    per_part = {}
    for part in CPU_PARTS:
        start, end = before.get(part, {}), after.get(part, {})
        per_part[part] = sum(seconds - start.get(pid, 0.0) for pid, seconds in end.items()) / requests
    return per_part


@dataclass(frozen=True)
class Spread:
    """Median with the lowest and highest value over repetitions."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        finite = [value for value in values if not math.isnan(value)]
        if not finite:
            return cls(math.nan, math.nan, math.nan)
        return cls(statistics.median(finite), min(finite), max(finite))
