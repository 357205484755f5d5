"""A test app with a short ``result_expires``: a batched task and an ordinary one beside it.

The ordinary task is the reference: whatever Celery does with its result, the
batched task's result must match.
"""

from __future__ import annotations

import os

from celery import Celery

from celery_batching import batched

BROKER = os.environ["CB_TEST_BROKER"]
RESULTS = BROKER.rsplit("/", 1)[0] + "/1"
# Short enough to tell apart from Celery's default of one day.
RESULT_EXPIRES = 120

app = Celery("expiring", broker=BROKER, backend=RESULTS)
app.conf.result_expires = RESULT_EXPIRES


@batched(app, max_batch_size=8)
def double(batch: list[int]) -> list[int]:
    return [2 * x for x in batch]


@app.task
def plain_double(x: int) -> int:
    return 2 * x
