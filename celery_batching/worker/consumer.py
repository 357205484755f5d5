"""The worker side of one batched queue: claim, decode, batch, store, acknowledge.

Three threads per queue, so the model never waits for Redis:

* the *fetcher* claims as many messages as the batcher has room for (at most
  one batch beyond the running one: no hoarding), decodes them, and feeds
  the batcher; a message whose ETA is still to come is parked in Redis until
  then (:mod:`~celery_batching.worker.claim`); when the queue is empty it
  waits for a watcher (:mod:`~celery_batching.worker.watch`) or the next ETA,
  never in a poll loop;
* the batcher's *predictor* runs ``predict`` once per batch;
* the *writer* stores each task's result (one pipeline per batch), then
  acknowledges the messages, then sends the task events.

Around each sample, Celery's own steps (signals, handlers, callbacks, chords,
retries, STARTED) run through :class:`~celery_batching.worker.outcomes.TaskTracer`:
before the batch on the predictor thread, after it on the writer thread.

A message is acknowledged only after its result is stored. Tasks that never
reach the model (revoked, expired, malformed, duplicates) go straight to the
writer.
"""

from __future__ import annotations

import functools
import logging
import os
import queue as queue_module
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis
from celery import Celery, states
from celery.exceptions import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded
from celery.platforms import EX_FAILURE
from celery.worker import state as worker_state
from kombu.serialization import prepare_accept_content
from kombu.transport.redis import Channel as RedisChannel

from .. import fastjson
from ..engine.batcher import Batcher, BatchReport, Outcome, PredictFn, Request
from ..engine.hooks import BatchHooks, call_hooks
from ..engine.policy import FlushPolicy
from ..protocol import Claimed, MessageDecoder, TaskMessage
from ..resp import database
from .arrays import plain_outputs, plain_value
from .claim import RedisQueue
from .events import TaskEvents
from .held import HeldTasks
from .limits import PredictLimits, time_limits
from .outcomes import Settled, TaskTracer, Traced, new_trace
from .redis_store import Acknowledgement
from .results import ResultWriter, TaskResult
from .watch import ArrivalWatch, own_connections

logger = logging.getLogger(__name__)

# Longest the fetcher waits on an empty queue before it looks around
# (expired claims of dead workers, ETAs other workers scheduled).
WAIT_SLICE_SECONDS = 1.0
# How often the fetcher brings back messages whose claimer died (visibility timeout), at most.
RESTORE_EVERY_SECONDS = 10.0
# Restores per visibility timeout when that is short: a dead worker's claims wait at most half a timeout more.
RESTORES_PER_TIMEOUT = 2
# Pause between retries while Redis is unreachable.
RETRY_PAUSE_SECONDS = 0.5
# How long a warm shutdown keeps retrying to store results before leaving the
# messages to the visibility timeout.
SHUTDOWN_WRITE_DEADLINE_SECONDS = 30.0

Validator = Callable[[Any], None]


@dataclass
class QueueSpec:
    """What a worker needs to serve one batched task."""

    task_name: str
    queue: str
    policy: FlushPolicy
    predict: PredictFn
    validate: Validator | None
    ignore_result: bool
    max_sample_bytes: int | None
    #: The Celery task itself: its handlers, retry options and request stack.
    task: Any = None


@dataclass
class _Done:
    """Writer work: tasks with their outcomes, from one batch or one claim.

    Until the writer is done with them, its messages count as held by the
    batcher, so a slow writer slows claiming (backpressure).
    """

    messages: list[TaskMessage]
    results: list[TaskResult]
    started: float
    runtime: float
    #: Messages of tasks whose final result is stored already: acknowledged, nothing else.
    duplicates: list[TaskMessage] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.messages) + len(self.duplicates)


@dataclass
class _Started:
    """Writer work: the STARTED records of a batch that began (``task_track_started``)."""

    results: list[TaskResult]


class BatchedQueueConsumer:
    """Serves one batched queue inside a worker process."""

    def __init__(
        self,
        app: Celery,
        spec: QueueSpec,
        hostname: str,
        send_events: bool,
        hooks: Sequence[BatchHooks] = (),
        celery_consumer: Any = None,
    ) -> None:
        self.app = app
        self.spec = spec
        self.hooks = list(hooks)
        self._connection = app.connection_for_read()
        channel = self._connection.default_channel
        if not isinstance(channel, RedisChannel):
            raise TypeError(f"celery-batching needs a Redis broker, not {self._connection.transport_cls!r}")
        self._kombu_channel = channel
        self._visibility_timeout = float(channel.visibility_timeout)
        self._restore_every = min(RESTORE_EVERY_SECONDS, self._visibility_timeout / RESTORES_PER_TIMEOUT)
        self.queue = RedisQueue(channel.client, spec.queue, app.conf.broker_transport_options)
        self.watch = ArrivalWatch(own_connections(channel.pool), self.queue.list_keys, spec.queue)
        self._next_eta: float | None = None
        self.decoder = MessageDecoder(
            spec.task_name,
            spec.queue,
            prepare_accept_content(app.conf.accept_content),
            spec.max_sample_bytes,
            fast_json=bool(app.conf.get(fastjson.FAST_JSON_SETTING, True)),
        )
        self.writer = ResultWriter(app, spec.task_name)
        # Broker and results on one server: a batch's acknowledgement goes in the transaction of its results.
        self._ack_with_results = self.writer.takes_acks_of(self.queue.client)
        self._broker_database = database(self.queue.client)
        self.events = TaskEvents(app, hostname, send_events)
        task = spec.task if spec.task is not None else app.tasks[spec.task_name]
        soft, hard = time_limits(task, app)
        self._limits = PredictLimits(spec.task_name, soft, hard, self._hard_time_limit) if soft or hard else None
        predict = plain_outputs(spec.predict)
        self.batcher = Batcher(
            spec.task_name,
            predict if self._limits is None else functools.partial(self._limits.call, predict),
            spec.policy,
            self._batch_done,
            self.hooks,
            admit=self._admit,
            on_start=self._batch_starts,
            unsplittable=(SoftTimeLimitExceeded,),
            hold_done=True,
        )
        # The batch predict() is running on, and whether it ran past its hard time limit.
        self._running: list[TaskMessage] = []
        self._hung = False
        self.tracer = TaskTracer(app, task, hostname, celery_consumer)
        self.held = HeldTasks(spec.task_name, hostname)
        # Samples that carry their Celery request through the batch, by id() of their message.
        self._traced: dict[int, Traced] = {}
        self._stopping = threading.Event()
        #: Set once the fetcher's first claim round ran (the worker's readiness probe waits for it).
        self.claiming = threading.Event()
        self._writes: queue_module.SimpleQueue[_Done | _Started | None] = queue_module.SimpleQueue()
        self._fetcher = threading.Thread(target=self._fetch_loop, name=f"fetch:{spec.queue}", daemon=True)
        self._writer_thread = threading.Thread(target=self._write_loop, name=f"write:{spec.queue}", daemon=True)
        self._next_restore = 0.0

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        self._declare_queue()
        self._writer_thread.start()
        self.batcher.start()
        self.watch.start()
        self._fetcher.start()

    def request_stop(self) -> None:
        """Stop claiming; :meth:`stop` does the rest (lets a worker stop many queues at once)."""
        self._stopping.set()
        self.watch.interrupt()

    def stop(self) -> None:
        """Warm shutdown: finish the running batch, store it, give the rest back.

        Unstarted messages go back before the running batch ends, so other
        workers can take them at once.
        """
        self.request_stop()
        self._give_back(self.batcher.stop(timeout=0))  # no batch starts from now on
        self._fetcher.join()
        self.watch.stop()
        # What the fetcher handed over meanwhile; a predictor stuck past its time limit is not waited for.
        self._give_back(self.batcher.stop(timeout=0 if self._hung else None))
        self._writes.put(None)
        self._writer_thread.join()
        self.events.close()
        self._connection.release()

    def terminate(self) -> None:
        """Cold shutdown: stop claiming and give the unstarted messages back; the running batch is left."""
        self.request_stop()
        self.watch.stop()
        self._give_back(self.batcher.stop(timeout=0))

    def _give_back(self, unstarted: list[Request]) -> None:
        if unstarted:
            returned = self._retry(
                lambda: self.queue.give_back([r.context.claimed for r in unstarted]), "give back unstarted messages"
            )
            logger.info("%s: gave %s unstarted message(s) back to the queue", self.spec.queue, returned)

    def _declare_queue(self) -> None:
        """Declare the queue with kombu so its routing exists for kombu's restore."""
        self.app.amqp.queues[self.spec.queue](self._kombu_channel).declare()

    # -- fetcher ---------------------------------------------------------

    def _fetch_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._fetch_once()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                logger.warning("%s: Redis unavailable (%s); retrying", self.spec.queue, exc)
                self._stopping.wait(RETRY_PAUSE_SECONDS)
            except Exception:  # keep serving whatever happens
                logger.exception("%s: unexpected error while fetching", self.spec.queue)
                self._stopping.wait(RETRY_PAUSE_SECONDS)

    def _fetch_once(self) -> None:
        self._maybe_restore_expired()
        room = self.batcher.wait_for_room(WAIT_SLICE_SECONDS)
        if room == 0 or self._stopping.is_set():
            return
        now = time.time()
        claim = self.queue.claim(room, now)
        self.claiming.set()
        self._next_eta = claim.next_eta
        if not claim.messages:
            self.watch.wait(self._idle_timeout())
            return
        # Stamped with the time Redis recorded the claim under, which restores compare with.
        decoded = [self.decoder.decode(item, now) for item in claim.messages]
        messages = self._park_future(decoded, now)
        if messages:
            call_hooks(self.hooks, "after_claim", self.spec.task_name, len(messages), [m.queue_wait for m in messages])
            self._dispatch(messages)

    def _park_future(self, messages: list[TaskMessage], now: float) -> list[TaskMessage]:
        """Park the messages whose ETA is still to come; returns the others, to run now."""
        later = [m for m in messages if m.error is None and m.eta is not None and m.eta.timestamp() > now]
        if not later:
            return messages
        self._next_eta = self.queue.schedule([(m.claimed, m.eta.timestamp()) for m in later if m.eta])
        parked = {id(m) for m in later}
        return [m for m in messages if id(m) not in parked]

    def _idle_timeout(self) -> float:
        """How long an idle fetcher may wait: a slice, or until the next scheduled message is due."""
        if self._next_eta is None:
            return WAIT_SLICE_SECONDS
        return min(WAIT_SLICE_SECONDS, self._next_eta - time.time())

    def scheduled(self, limit: int = 1000) -> list[tuple[float, TaskMessage]]:
        """The queue's parked messages (ETA in epoch seconds, decoded message), earliest first.

        For remote control (Celery's ``inspect scheduled``); the set is the
        queue's, shared by every worker serving it.
        """
        return [
            (item.eta, self.decoder.decode(Claimed(item.tag, item.payload))) for item in self.queue.scheduled(limit)
        ]

    def _dispatch(self, messages: list[TaskMessage]) -> None:
        """Send runnable messages to the batcher and the others straight to the writer."""
        redelivered = [m.task_id for m in messages if m.redelivered and m.task_id]
        already_done = self.writer.already_final(redelivered) if redelivered else set()
        runnable: list[Request] = []
        unrun: list[TaskMessage] = []
        duplicates: list[TaskMessage] = []
        self.tracer.received(messages)
        traces_all = self.tracer.traces()
        for message in messages:
            if message.task_id in already_done:
                call_hooks(self.hooks, "after_skip", self.spec.task_name, message.task_id, "duplicate")
                duplicates.append(message)
                continue
            if message.error is None:
                if traces_all or self.tracer.needs_request(message):
                    self._traced[id(message)] = new_trace(self.tracer, message)
                self._validate(message)
            if message.error is None:
                runnable.append(Request(message.sample, context=message))
            else:
                unrun.append(message)
        if duplicates or unrun:
            results = [self._task_result(m, _unrun_state(m.error), m.error) for m in unrun]
            self._hand_to_writer(_Done(unrun, results, time.time(), 0.0, duplicates))
        self.held.reserve(request.context for request in runnable)
        self.batcher.put(runnable)

    def _validate(self, message: TaskMessage) -> None:
        """A sample the model refuses fails alone, before it is batched."""
        if self.spec.validate is not None:
            try:
                self.spec.validate(message.sample)
            except Exception as exc:  # noqa: BLE001 - the sample's own error, reported to its caller
                message.error = exc

    def _admit(self, request: Request) -> BaseException | None:
        """Revoked and expired tasks never reach the model (checked as the batch forms)."""
        message: TaskMessage = request.context
        if message.task_id in worker_state.revoked:
            call_hooks(self.hooks, "after_skip", self.spec.task_name, message.task_id, "revoked")
            return TaskRevokedError("revoked")
        if message.expired():
            call_hooks(self.hooks, "after_skip", self.spec.task_name, message.task_id, "expired")
            return TaskRevokedError("expired")
        return None

    def _maybe_restore_expired(self) -> None:
        """Bring back messages claimed by workers that died (kombu's visibility timeout).

        On a timer, busy or not: a worker started with ``-Q`` naming only
        batched queues has no Celery consumer to do it, and a dead worker's
        claims must not wait for the queue to drain.
        """
        now = time.monotonic()
        if now < self._next_restore:
            return
        self._next_restore = now + self._restore_every
        self._kombu_channel.qos.restore_visible(num=None, interval=1)
        self.queue.prune_claimed(self._visibility_timeout)

    # -- predictor hand-off ------------------------------------------------

    def _batch_starts(self, requests: list[Request]) -> None:
        """Celery's steps before the body, for each sample of a batch about to run."""
        messages = [request.context for request in requests]
        self._running = messages
        self.held.activate(messages)
        worker_state.total_count.update({self.spec.task_name: len(messages)})  # ``inspect stats`` counts them
        worker_state.all_total_count[0] += len(messages)
        if not self._traced:
            return
        try:
            started = self.tracer.before(messages, self._traced)
        except Exception:
            logger.exception("%s: preparing a batch's tasks failed", self.spec.queue)
            return
        if started:
            results = [self.tracer.started_result(m, self._traced[id(m)]) for m in started]
            self._writes.put(_Started(self._guard_late(started, results)))

    def _hard_time_limit(self, seconds: float) -> None:
        """``predict`` ran past ``time_limit``: fail its tasks, and stop the worker for a fresh one.

        The predictor thread cannot be killed, and a model stuck in a kernel may
        never return: the worker shuts down warmly (the other queues finish
        their batches) and, should that hang too, exits after a deadline.
        """
        messages, self._running, self._hung = self._running, [], True
        error = TimeLimitExceeded(seconds)
        results = [self._task_result(m, states.FAILURE, error) for m in messages]
        self._hand_to_writer(_Done(messages, results, time.time(), seconds))
        logger.error(
            "%s: predict() ran past time_limit=%ss; its %d task(s) fail with TimeLimitExceeded and this worker "
            "stops for its supervisor to start a fresh one",
            self.spec.task_name,
            seconds,
            len(messages),
        )
        self.request_stop()
        worker_state.should_stop = EX_FAILURE  # type: ignore[assignment]  # an exit code, as Celery sets it
        deadline = threading.Timer(SHUTDOWN_WRITE_DEADLINE_SECONDS, os._exit, (EX_FAILURE,))
        deadline.daemon = True
        deadline.start()

    def _batch_done(self, report: BatchReport) -> None:
        if self._hung:
            logger.warning("%s: a batch returned after its time limit; its outcomes stay failed", self.spec.queue)
            return
        messages = [outcome.request.context for outcome in report.outcomes]
        results = [self._outcome_result(outcome) for outcome in report.outcomes]
        self._writes.put(_Done(messages, results, report.started, report.seconds))

    def _outcome_result(self, outcome: Outcome) -> TaskResult:
        message: TaskMessage = outcome.request.context
        if outcome.error is not None:
            return self._task_result(message, _unrun_state(outcome.error), outcome.error)
        return self._task_result(message, states.SUCCESS, outcome.value)

    def _task_result(self, message: TaskMessage, state: str, value: Any) -> TaskResult:
        return TaskResult(
            task_id=message.task_id or "",
            state=state,
            value=value,
            ignore_result=message.ignore_result or self.spec.ignore_result or not message.task_id,
            store_once=message.redelivered,
            group_id=message.group_id,
            parent_id=message.parent_id,
            reply_channel=message.reply_channel,
        )

    # -- writer ----------------------------------------------------------

    def _hand_to_writer(self, done: _Done) -> None:
        """Queue claimed messages for the writer; they count as held until it is done with them."""
        self.batcher.hold(len(done))
        self._writes.put(done)

    def _write_loop(self) -> None:
        while (job := self._writes.get()) is not None:
            try:
                if isinstance(job, _Started):
                    self._retry(lambda: self.writer.write(job.results), "store STARTED states")
                else:
                    self._write(job)
            except Exception:  # messages stay unacked and come back later
                logger.exception("%s: storing a batch failed; its messages stay unacknowledged", self.spec.queue)
            finally:
                if isinstance(job, _Done):
                    self.batcher.release(len(job))

    def _write(self, done: _Done) -> None:
        terminated = self.held.release(done.messages)
        if terminated:
            done.results = [_terminated(r) if r.task_id in terminated else r for r in done.results]
        done.results = self._guard_late(done.messages, done.results)
        self._drop_finished_elsewhere(done)
        traced = {id(m): self._traced[id(m)] for m in done.messages if id(m) in self._traced} if self._traced else {}
        for message, result in zip(done.messages, done.results):
            if id(message) in traced:
                result.value = plain_value(result.value)  # signals and callbacks see what an ordinary task returns
        settled = self.tracer.settle(done.messages, done.results, traced) if traced else Settled(done.results)
        acked = [m.claimed.tag for m in done.messages + done.duplicates]
        ack = Acknowledgement(self._broker_database, self.queue.ack_commands(acked)) if self._ack_with_results else None
        stored = self._retry(lambda: self.writer.write(settled.results, ack), "store results")
        if ack is None or not ack.done:
            self._retry(lambda: self.queue.ack(acked), "acknowledge")
        if traced:
            settled.results = stored
            self.tracer.finish(done.messages, settled, traced, done.runtime)
            for key in traced:
                self._traced.pop(key, None)
        for message, result in zip(done.messages, stored):
            if result.failed and not message.task_id:
                logger.error("%s: dropped a message with no task id: %s", self.spec.queue, result.value)
            if result.refused:
                call_hooks(self.hooks, "after_skip", self.spec.task_name, result.task_id, "duplicate")
        self._send_events(done, stored)
        failures = [r.value for r in stored if r.failed and not r.refused]
        succeeded = sum(1 for r in stored if not r.failed and not r.refused)
        call_hooks(self.hooks, "after_results", self.spec.task_name, succeeded, len(failures), failures)

    def _drop_finished_elsewhere(self, done: _Done) -> None:
        """Move store-once tasks whose final result is already stored to ``done.duplicates``.

        Their message ran twice (a redelivery, or a claim held past the
        visibility timeout): the stored outcome stands, and this copy's
        callbacks, retries and handlers must not run again. The store-once
        script still guards the race with a result stored after this check.
        """
        candidates = [r.task_id for r in done.results if r.store_once and r.task_id]
        if not candidates:
            return
        finished = self._retry(lambda: self.writer.already_final(candidates), "look up stored results")
        if not finished:
            return
        kept: list[tuple[TaskMessage, TaskResult]] = []
        for message, result in zip(done.messages, done.results):
            if result.store_once and result.task_id in finished:
                call_hooks(self.hooks, "after_skip", self.spec.task_name, result.task_id, "duplicate")
                done.duplicates.append(message)
                self._traced.pop(id(message), None)
            else:
                kept.append((message, result))
        done.messages = [m for m, _ in kept]
        done.results = [r for _, r in kept]

    def _send_events(self, done: _Done, stored: list[TaskResult]) -> None:
        """Task events are for observers: failing to send them is logged, never fatal."""
        if not self.events.enabled:
            return
        announced = [(m, r) for m, r in zip(done.messages, stored) if m.task_id and not r.refused]
        if not announced:
            return
        received = [(m.received_fields, m.claimed_at) for m, _ in announced]
        results = [r for _, r in announced]
        try:
            self._retry(
                lambda: self.events.batch_done(self.spec.task_name, received, done.started, done.runtime, results),
                "send task events",
            )
        except Exception:  # results are stored and acknowledged already
            logger.exception("%s: sending the task events of a batch failed", self.spec.queue)

    def _guard_late(self, messages: list[TaskMessage], results: list[TaskResult]) -> list[TaskResult]:
        """Results of messages held past the visibility timeout are stored only if none is there.

        Such a message may have been restored and run by another worker, whose
        result the client may already have seen: it must not be overwritten.
        Known late now, a result is store-once; sent in time, Redis still
        checks as the write runs (a write sent into a cut link arrives when the
        link is back, however late).
        """
        now = time.time()
        for message, result in zip(messages, results):  # the writer's own records: set in place
            result.late_after = message.claimed_at + self._visibility_timeout
            result.store_once = result.store_once or now > result.late_after
        return results

    def _retry(self, action: Callable[[], Any], what: str) -> Any:
        """Run ``action`` until Redis answers; during shutdown, only up to a deadline."""
        deadline = None
        while True:
            try:
                return action()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if self._stopping.is_set():
                    deadline = deadline or time.monotonic() + SHUTDOWN_WRITE_DEADLINE_SECONDS
                    if time.monotonic() > deadline:
                        raise
                logger.warning("%s: cannot %s, Redis unavailable (%s); retrying", self.spec.queue, what, exc)
                time.sleep(RETRY_PAUSE_SECONDS)


def _terminated(result: TaskResult) -> TaskResult:
    """The outcome of a task revoked with ``terminate=True`` while its batch ran."""
    return replace(result, state=states.REVOKED, value=TaskRevokedError("terminated"))


def _unrun_state(error: BaseException | None) -> str:
    return states.REVOKED if isinstance(error, TaskRevokedError) else states.FAILURE
