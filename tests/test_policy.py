"""The flush policy as a table of cases: no threads, no sleeps, the time passed in."""

from __future__ import annotations

import pytest

from celery_batching import ConfigurationError, FlushPolicy
from celery_batching.engine.policy import Flush, Idle, WaitUntil

T0 = 1000.0


@pytest.mark.parametrize(
    ("max_batch_size", "max_wait", "pending", "oldest", "now", "expected"),
    [
        # nothing pending: sleep until something arrives
        (64, 0.0, 0, None, T0, Idle()),
        (64, 0.5, 0, None, T0, Idle()),
        # default max_wait=0: an idle model runs whatever is there, a lone request included
        (64, 0.0, 1, T0, T0, Flush(1)),
        (64, 0.0, 37, T0 - 0.01, T0, Flush(37)),
        # a full batch runs at once, whatever max_wait says
        (64, 0.5, 64, T0, T0, Flush(64)),
        # more than a batch pending (arrived while the model ran): one full batch
        (64, 0.0, 100, T0 - 1, T0, Flush(64)),
        (8, 10.0, 9, T0, T0, Flush(8)),
        # max_wait > 0: a partial batch waits until its oldest sample has waited max_wait
        (64, 0.5, 1, T0, T0, WaitUntil(T0 + 0.5)),
        (64, 0.5, 10, T0, T0 + 0.2, WaitUntil(T0 + 0.5)),
        (64, 0.5, 10, T0, T0 + 0.5, Flush(10)),
        # ... and never longer: samples that aged while the model ran go at once
        (64, 0.5, 3, T0, T0 + 7.0, Flush(3)),
        # batch of one: every request runs alone
        (1, 0.0, 5, T0, T0, Flush(1)),
    ],
)
def test_decide(max_batch_size, max_wait, pending, oldest, now, expected):
    policy = FlushPolicy(max_batch_size=max_batch_size, max_wait=max_wait)
    assert policy.decide(pending, oldest, now) == expected


@pytest.mark.parametrize(
    ("max_batch_size", "waiting", "model_busy", "room"),
    [
        # A batch running: one batch beyond it, counting what waits to be stored
        (64, 0, True, 64),
        (64, 10, True, 54),
        (64, 64, True, 0),
        (64, 100, True, 0),
        # The model idle: the next batch may be claimed beside one still being stored, never more than a batch at once
        (64, 0, False, 64),
        (64, 64, False, 64),
        (64, 100, False, 28),
        (64, 128, False, 0),
        (64, 200, False, 0),
        (1, 0, True, 1),
        (1, 1, False, 1),
        (1, 2, False, 0),
    ],
)
def test_room_caps_claims_at_one_batch_beyond_the_running_one(max_batch_size, waiting, model_busy, room):
    assert FlushPolicy(max_batch_size=max_batch_size).room(waiting, model_busy) == room


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be >= 1, got 0"),
        ({"max_batch_size": -3}, "max_batch_size must be >= 1, got -3"),
        ({"max_batch_size": 2.5}, "max_batch_size must be an int >= 1, got float 2.5"),
        ({"max_batch_size": True}, "max_batch_size must be an int >= 1, got bool True"),
        ({"max_batch_size": "64"}, "max_batch_size must be an int >= 1, got str '64'"),
        ({"max_wait": -0.1}, "max_wait must be finite and >= 0 seconds, got -0.1"),
        ({"max_wait": float("inf")}, "max_wait must be finite and >= 0 seconds, got inf"),
        ({"max_wait": float("nan")}, "max_wait must be finite and >= 0 seconds, got nan"),
        ({"max_wait": "0.1"}, "max_wait must be a number of seconds >= 0, got str '0.1'"),
    ],
)
def test_bad_values_are_refused_when_declared(kwargs, message):
    with pytest.raises(ConfigurationError) as raised:
        FlushPolicy(**kwargs)
    assert str(raised.value) == message
