"""The directory of live workers: which queue has a worker, as last heard (pure part)."""

from __future__ import annotations

import pytest

from celery_batching.client.directory import live_workers


@pytest.mark.parametrize(
    ("sightings", "now", "expected"),
    [
        ({}, 10.0, {}),
        ({("embed", "w1"): 9.0}, 10.0, {"embed": ["w1"]}),
        ({("embed", "w1"): 6.0}, 10.0, {}),  # older than the 3 s grace
        ({("embed", "w1"): 7.0}, 10.0, {"embed": ["w1"]}),  # exactly at the grace
        ({("embed", "w2"): 9.0, ("embed", "w1"): 9.5, ("fill_mask", "w1"): 1.0}, 10.0, {"embed": ["w1", "w2"]}),
    ],
)
def test_live_workers_table(sightings, now, expected):
    assert live_workers(sightings, now, grace=3.0) == expected
