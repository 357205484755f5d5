"""A test app with batched and ordinary twins, for differential tests of Celery fidelity.

Each batched task has an ordinary ``@app.task`` twin doing the same per
sample, so a test can run one scenario with both and compare what callers
see. What happens inside the worker (handlers, signals, batch sizes) is
recorded in Redis lists of the broker's database, named ``seen:<what>``, for
the test to read.
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery, Task, signals

from celery_batching import batched

BROKER = os.environ["CB_TEST_BROKER"]
RESULTS = BROKER.rsplit("/", 1)[0] + "/1"

app = Celery("canvas", broker=BROKER, backend=RESULTS)
app.conf.update(
    broker_transport_options={"visibility_timeout": 3600},
    worker_send_task_events=True,
    result_extended=os.environ.get("CB_RESULT_EXTENDED") == "1",
    task_track_started=os.environ.get("CB_TRACK_STARTED") == "1",
)
# No socket timeout: the gated tasks block in BLPOP for as long as a test holds them.
_redis = redis.Redis.from_url(BROKER, socket_timeout=None)


def record(what: str, **fields: object) -> None:
    """Leave a JSON line in ``seen:<what>``, and in ``seen:all`` in order of occurrence, for the test."""
    line = json.dumps({"what": what, **fields}, default=repr)
    _redis.rpush(f"seen:{what}", line)
    _redis.rpush("seen:all", line)


class Recorded(Task):
    """Records every handler Celery calls, with the arguments it passes."""

    def before_start(self, task_id, args, kwargs):
        record("before_start", task=self.name, id=task_id, args=args)

    def on_success(self, retval, task_id, args, kwargs):
        record("on_success", task=self.name, id=task_id, retval=retval, args=args)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        record("on_failure", task=self.name, id=task_id, exc=type(exc).__name__, args=args, einfo=type(einfo).__name__)

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        record("on_retry", task=self.name, id=task_id, exc=type(exc).__name__)

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        record("after_return", task=self.name, id=task_id, status=status)


def _short(task: object) -> str:
    return getattr(task, "name", str(task)).rsplit(".", 1)[-1]


@signals.task_prerun.connect
def _prerun(sender=None, task_id=None, task=None, args=None, kwargs=None, **_):
    record("task_prerun", task=_short(sender), id=task_id, args=args, request_id=sender.request.id)


@signals.task_postrun.connect
def _postrun(sender=None, task_id=None, task=None, args=None, kwargs=None, retval=None, state=None, **_):
    record("task_postrun", task=_short(sender), id=task_id, state=state, retval=retval)


@signals.task_success.connect
def _success(sender=None, result=None, **_):
    record("task_success", task=_short(sender), id=sender.request.id, result=result)


@signals.task_failure.connect
def _failure(sender=None, task_id=None, exception=None, args=None, **_):
    record("task_failure", task=_short(sender), id=task_id, exc=type(exception).__name__, args=args)


@signals.task_retry.connect
def _retry(sender=None, request=None, reason=None, **_):
    record("task_retry", task=_short(sender), id=request.id, reason=type(reason).__name__)


@signals.task_revoked.connect
def _revoked(sender=None, request=None, terminated=None, expired=None, **_):
    record("task_revoked", task=_short(sender), id=request.id, expired=expired)


@signals.task_received.connect
def _received(sender=None, request=None, **_):
    record("task_received", task=_short(request.task), id=request.id)


# -- the twins -----------------------------------------------------------------


@batched(app, max_batch_size=32, name="b_add_one", base=Recorded)
def b_add_one(batch: list[int]) -> list[int]:
    record("batch", task="b_add_one", size=len(batch))
    return [x + 1 for x in batch]


@batched(app, max_batch_size=32, max_wait=0.5, name="b_add_one_patient")
def b_add_one_patient(batch: list[int]) -> list[int]:
    """Waits for company: after an ordinary step, whose results come one by one."""
    record("batch", task="b_add_one_patient", size=len(batch))
    return [x + 1 for x in batch]


@app.task(name="o_add_one", base=Recorded)
def o_add_one(x: int) -> int:
    return x + 1


@batched(app, max_batch_size=32, name="b_fail_negative", base=Recorded)
def b_fail_negative(batch: list[int]) -> list[int]:
    """Raises for a batch holding a negative number: bisection fails that one alone."""
    record("batch", task="b_fail_negative", size=len(batch))
    for x in batch:
        if x < 0:
            raise ValueError(f"negative: {x}")
    return batch


@app.task(name="o_fail_negative", base=Recorded)
def o_fail_negative(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative: {x}")
    return x


@batched(app, max_batch_size=32, name="b_gated", base=Recorded)
def b_gated(batch: list[int]) -> list[int]:
    """Blocks until the test pushes to the Redis list 'gate' (one pop per batch)."""
    _redis.blpop(["gate"], timeout=30)
    return batch


@app.task(name="o_gated", base=Recorded)
def o_gated(x: int) -> int:
    _redis.blpop(["gate"], timeout=30)
    return x


@batched(app, max_batch_size=32, name="b_soft_limited", soft_time_limit=0.5)
def b_soft_limited(batch: list[int]) -> list[int]:
    """Runs Python code for up to 20 s: the soft limit interrupts it."""
    record("batch", task="b_soft_limited", size=len(batch))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return batch


@batched(app, max_batch_size=32, name="b_hard_limited", time_limit=1)
def b_hard_limited(batch: list[int]) -> list[int]:
    """Stuck in one C call for a minute, as in a hung kernel: only the hard limit gets it out."""
    record("batch", task="b_hard_limited", size=len(batch))
    time.sleep(60)
    return batch


@batched(app, max_batch_size=32, name="b_total")
def b_total(batch: list[list[int]]) -> list[int]:
    """A chord body as a batched task: sums its header's results."""
    return [sum(values) for values in batch]


@app.task(name="o_total")
def o_total(values: list[int]) -> int:
    return sum(values)


@app.task(name="o_ids", bind=True)
def o_ids(self: Task, value: object) -> dict:
    """Reports the ids Celery gave it: a chain's last step shows parent_id and root_id."""
    return {"value": value, "id": self.request.id, "parent_id": self.request.parent_id, "root_id": self.request.root_id}


@app.task(name="errback_new")
def errback_new(request, exc, traceback) -> None:
    """A new-style errback: Celery calls it in the worker with the failed task's request."""
    record("errback_new", id=request.id, exc=type(exc).__name__, has_traceback=bool(traceback))


@app.task(name="errback_old")
def errback_old(task_id: str) -> None:
    """An old-style errback: sent as a task with the failed task's id."""
    record("errback_old", id=task_id)


class Flaky(Exception):
    """The exception the retrying twins retry on."""


class CountsAttempts(Recorded):
    """Counts each attempt of a task at ``attempts:<task>:<sample>``, once per try, before it runs."""

    def before_start(self, task_id, args, kwargs):
        super().before_start(task_id, args, kwargs)
        _redis.incr(f"attempts:{self.name}:{args[0]}")


def _failing(task: str, sample: str) -> bool:
    """A sample "fail:N" fails its first N attempts."""
    return sample.startswith("fail:") and int(_redis.get(f"attempts:{task}:{sample}") or 0) <= int(sample[5:])


@batched(
    app,
    max_batch_size=32,
    name="b_flaky",
    base=CountsAttempts,
    autoretry_for=(Flaky,),
    max_retries=2,
    retry_backoff=False,
    default_retry_delay=0,
)
def b_flaky(batch: list[str]) -> list[str]:
    """Samples "fail:N" fail their first N attempts with Flaky; others succeed at once."""
    record("batch", task="b_flaky", size=len(batch))
    for sample in batch:
        if _failing("b_flaky", sample):
            raise Flaky(sample)
    return [sample.upper() for sample in batch]


@app.task(
    name="o_flaky",
    base=CountsAttempts,
    autoretry_for=(Flaky,),
    max_retries=2,
    retry_backoff=False,
    default_retry_delay=0,
)
def o_flaky(sample: str) -> str:
    if _failing("o_flaky", sample):
        raise Flaky(sample)
    return sample.upper()
