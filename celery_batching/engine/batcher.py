"""The batching engine: collect samples, flush by the policy, predict, split outcomes.

It knows nothing about Celery or torch. A feeder (the worker's queue consumer,
or the in-process streamer) :meth:`Batcher.put` s requests; one predictor
thread takes batches as :class:`~celery_batching.engine.policy.FlushPolicy` decides,
runs ``predict`` once per batch and hands one :class:`Outcome` per request to
``on_done``. While a batch runs, new requests pile up and form the next one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any

from ..errors import BatchSizeMismatch
from .hooks import BatchHooks, call_hooks
from .policy import Flush, FlushPolicy, Idle, WaitUntil

logger = logging.getLogger(__name__)

PredictFn = Callable[[list[Any]], Sequence[Any]]


@dataclass
class Request:
    """One sample waiting for the model; ``context`` belongs to the feeder."""

    sample: Any
    context: Any = None
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class Outcome:
    """What became of one request: a value, or the exception that failed it."""

    request: Request
    value: Any = None
    error: BaseException | None = None


@dataclass
class BatchReport:
    """One predicted batch: its outcomes and when/how long the model ran."""

    outcomes: list[Outcome]
    started: float
    seconds: float


def predict_isolated(
    task_name: str, predict: PredictFn, samples: list[Any], unsplittable: tuple[type[BaseException], ...] = ()
) -> list[tuple[Any, BaseException | None]]:
    """Run ``predict`` on ``samples``; when it raises, bisect so only bad samples fail.

    A raising batch is split in halves and each half retried, down to single
    samples, which fail with their own exception. An out-of-memory error on a
    big batch is thereby retried on smaller ones before any sample fails. A
    result of the wrong length fails the whole batch: there is no telling which
    output belongs to which sample. An ``unsplittable`` exception (a time limit) is
    no sample's fault: it fails the whole batch at once.
    """
    try:
        outputs = predict(samples)
    except Exception as exc:  # noqa: BLE001 - any model error is isolated, never fatal
        if len(samples) == 1 or isinstance(exc, unsplittable):
            return [(None, exc)] * len(samples)
        middle = len(samples) // 2
        return predict_isolated(task_name, predict, samples[:middle], unsplittable) + predict_isolated(
            task_name, predict, samples[middle:], unsplittable
        )
    if not isinstance(outputs, Sized) or len(outputs) != len(samples):
        got = len(outputs) if isinstance(outputs, Sized) else f"a {type(outputs).__name__}"
        error = BatchSizeMismatch(task_name, len(samples), got)
        return [(None, error)] * len(samples)
    return [(output, None) for output in outputs]


class Batcher:
    """Feeds ``predict`` with batches chosen by ``policy`` on its own thread.

    With ``hold_done``, a finished batch stays held (counted against
    :meth:`room`) from its hand-over to ``on_done`` until the feeder
    :meth:`release` s it, so what waits to be stored counts as claimed.
    """

    def __init__(
        self,
        name: str,
        predict: PredictFn,
        policy: FlushPolicy,
        on_done: Callable[[BatchReport], None],
        hooks: Sequence[BatchHooks] = (),
        clock: Callable[[], float] = time.monotonic,
        admit: Callable[[Request], BaseException | None] | None = None,
        on_start: Callable[[list[Request]], None] | None = None,
        unsplittable: tuple[type[BaseException], ...] = (),
        hold_done: bool = False,
    ) -> None:
        self.name = name
        self._hold_done = hold_done
        self._admit = admit
        self._on_start = on_start
        self._unsplittable = unsplittable
        self.policy = policy
        self._predict = predict
        self._on_done = on_done
        self._hooks = list(hooks)
        self._clock = clock
        self._pending: deque[Request] = deque()
        # Requests the feeder still holds beside the pending ones (finished batches not yet settled).
        self._held = 0
        # Requests of the batch being predicted (0: the model is idle).
        self._running = 0
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"batcher:{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def room(self) -> int:
        """How many more requests may be queued now: at most one batch beyond the running one.

        Held requests count as queued: a feeder that is slow to settle
        finished batches (a slow result store) claims less, instead of
        hoarding work other consumers could take. While the model is idle,
        the next batch may be queued beside one batch still held, so storing
        a batch overlaps with running the next (:meth:`FlushPolicy.room`).
        """
        with self._changed:
            return self._room()

    def _room(self) -> int:
        return self.policy.room(len(self._pending) + self._held, model_busy=self._running > 0)

    def wait_for_room(self, timeout: float) -> int:
        """Block until there is room (or ``timeout``); returns the room."""
        deadline = self._clock() + timeout
        with self._changed:
            while not self._stopping and self._room() == 0:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return self._room()

    def hold(self, count: int) -> None:
        """Count ``count`` requests of the feeder's own against the room until it :meth:`release` s them."""
        with self._changed:
            self._held += count

    def release(self, count: int) -> None:
        """The feeder settled ``count`` held requests (a finished batch stored, say): room again."""
        with self._changed:
            self._held -= count
            self._changed.notify_all()

    def put(self, requests: Sequence[Request]) -> None:
        """Queue requests for the model. The feeder respects :meth:`room`."""
        if not requests:
            return
        with self._changed:
            self._pending.extend(requests)
            self._changed.notify_all()

    def stop(self, timeout: float | None = None) -> list[Request]:
        """Finish the running batch, stop, and return the requests never started."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._changed:
            unstarted = list(self._pending)
            self._pending.clear()
        return unstarted

    def _next_batch(self) -> list[Request] | None:
        with self._changed:
            while not self._stopping:
                oldest = self._pending[0].arrived if self._pending else None
                decision = self.policy.decide(len(self._pending), oldest, self._clock())
                if isinstance(decision, Flush):
                    batch = [self._pending.popleft() for _ in range(decision.size)]
                    self._running = len(batch)
                    self._changed.notify_all()
                    return batch
                if isinstance(decision, WaitUntil):
                    self._changed.wait(max(0.0, decision.deadline - self._clock()))
                else:
                    assert isinstance(decision, Idle)
                    self._changed.wait()
            return None

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            report = self.run_batch(batch)
            with self._changed:
                self._running = 0
                if self._hold_done:
                    self._held += len(batch)
                self._changed.notify_all()
            try:
                self._on_done(report)
            except Exception:  # keep serving; the feeder logs its own failures
                logger.exception("%s: handing over a finished batch failed", self.name)

    def run_batch(self, batch: list[Request]) -> BatchReport:
        """Predict one batch now, on the calling thread.

        ``admit`` is asked about each request first (at the last moment, so a
        revoke that came while the request waited still counts); a refused
        request gets its refusal as its outcome and never reaches the model.
        ``on_start`` then sees the admitted requests, just before ``predict``.
        """
        outcomes: list[Outcome] = []
        admitted: list[Request] = []
        for request in batch:
            refusal = self._admit(request) if self._admit is not None else None
            if refusal is None:
                admitted.append(request)
            else:
                outcomes.append(Outcome(request, error=refusal))
        started = time.time()
        seconds = 0.0
        if admitted:
            if self._on_start is not None:
                self._on_start(admitted)
            call_hooks(self._hooks, "before_predict", self.name, len(admitted))
            began = time.perf_counter()
            results = predict_isolated(
                self.name, self._predict, [request.sample for request in admitted], self._unsplittable
            )
            seconds = time.perf_counter() - began
            call_hooks(self._hooks, "after_predict", self.name, len(admitted), seconds)
            outcomes += [Outcome(request, value, error) for request, (value, error) in zip(admitted, results)]
        return BatchReport(outcomes, started, seconds)
