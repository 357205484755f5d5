"""Overload at small scale: a slow model offered ten times its rate, through a bounded queue.

The same run as ``python -m benchmarks.overload``, shorter. What must hold,
without asserting any timing: every call is either refused (``QueueFull``,
raised by ``.delay()`` itself) or accepted, every accepted one gets its right
result within its deadline (none expired, none lost), and nothing hangs
(every wait is bounded).
"""

from __future__ import annotations

import pytest

from benchmarks.overload import Config, run


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ten_times_the_models_rate_is_shed_at_the_push_and_the_accepted_meet_their_deadline():
    # Given a model of 20 samples/s, a queue bound of 5 and a deadline of 30 s per request
    config = Config(seconds=1.0, load=10, deadline=30.0, batch_size=2, batch_seconds=0.1, queue_bound=5)

    # When load is offered at ten times that rate
    figures = run(config)

    # Then some calls were refused by QueueFull and the rest accepted
    assert figures.refused_ms and figures.accepted > 0
    assert figures.accepted + len(figures.refused_ms) == figures.sent

    # And every accepted call got its right result within its deadline: none expired, lost or wrong
    assert (figures.expired, figures.lost, figures.wrong) == (0, 0, 0)
    assert figures.met_deadline == figures.accepted == len(figures.accepted_ms)
