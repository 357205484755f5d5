"""Length bucketing: split one drained batch into sub-batches of similar length.

A transformer batch is padded to its longest sample, so one long sentence
among many short ones makes every row pay for its length. Grouping samples of
similar token length into separate forward passes cuts that padding; the
outputs are put back in the caller's order, so the batch contract
(one output per sample, same order) is untouched. Pure: no torch here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from ..errors import BatchSizeMismatch, ConfigurationError

Item = TypeVar("Item")
Result = TypeVar("Result")

# A sub-batch takes a longer sample while it is at most this many times its shortest one.
DEFAULT_MAX_RATIO = 1.5
# A sub-batch below this size grows regardless of lengths: each forward pass has a fixed cost.
DEFAULT_MIN_SIZE = 8


def plan_buckets(
    lengths: Sequence[int],
    *,
    max_ratio: float = DEFAULT_MAX_RATIO,
    min_size: int = DEFAULT_MIN_SIZE,
) -> list[list[int]]:
    """Group the indices of ``lengths`` into buckets of similar length.

    Indices are taken shortest first (ties keep their order); a bucket takes
    the next index while that length is at most ``max_ratio`` times the
    bucket's shortest, or while the bucket holds fewer than ``min_size``.
    """
    if max_ratio < 1.0:
        raise ConfigurationError(f"max_ratio must be >= 1.0, got {max_ratio!r}")
    if min_size < 1:
        raise ConfigurationError(f"min_size must be >= 1, got {min_size!r}")
    buckets: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        if buckets and _fits(buckets[-1], lengths, lengths[index], max_ratio, min_size):
            buckets[-1].append(index)
        else:
            buckets.append([index])
    return buckets


def _fits(bucket: list[int], lengths: Sequence[int], length: int, max_ratio: float, min_size: int) -> bool:
    shortest = max(lengths[bucket[0]], 1)
    return len(bucket) < min_size or length <= shortest * max_ratio


def map_buckets(
    items: Sequence[Item],
    buckets: Sequence[Sequence[int]],
    run: Callable[[list[Item]], Sequence[Result]],
) -> list[Result]:
    """Call ``run`` once per bucket and return its outputs in ``items`` order.

    ``buckets`` must cover every index of ``items`` exactly once (as
    :func:`plan_buckets` does); ``run`` must return one output per item it got.
    """
    covered = sorted(i for bucket in buckets for i in bucket)
    if covered != list(range(len(items))):
        raise ValueError(f"buckets must cover indices 0..{len(items) - 1} exactly once, got {covered}")
    by_index: dict[int, Result] = {}
    for bucket in buckets:
        outputs = run([items[i] for i in bucket])
        if len(outputs) != len(bucket):
            raise BatchSizeMismatch("bucketed predict", len(bucket), len(outputs))
        by_index.update(zip(bucket, outputs))
    return [by_index[i] for i in range(len(items))]
