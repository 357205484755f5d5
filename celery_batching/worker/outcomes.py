"""What Celery does around one task, done for every sample of a batch.

Celery's worker runs each task through ``celery.app.trace.build_tracer``:
``task_prerun``, ``before_start``, STARTED, the body, then the callbacks and
the next chain step, the result (with its ``result_extended`` fields), chord
counters, ``on_success``/``on_failure``/``on_retry``, ``task_success``/
``task_failure``/``task_retry``, errbacks, ``after_return`` and
``task_postrun``. Here the body is one ``predict`` for the whole batch, so
what comes before the body runs for every sample before the batch (on the
predictor thread), and what comes after it for every sample after the batch
(on the writer thread), each sample in Celery's order.

The Redis work of the plain case stays one pipeline per batch (results and
STARTED are written by :class:`~celery_batching.worker.results.ResultWriter`);
everything else is Celery's own: signatures for callbacks, ``Task.retry``
for retries, the backend's ``mark_as_*`` for chords, failed chains and
errbacks.

Each sample's signals run in a :mod:`contextvars` context of its own, entered
before the batch and again after it, so an integration that keeps a span or a
token in a context variable from ``task_prerun`` to ``task_postrun``
(OpenTelemetry, Sentry) sees one task at a time.
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, cast

from billiard.einfo import ExceptionInfo
from celery import Celery, Task, group, signals, states
from celery._state import _task_stack  # type: ignore[attr-defined]  # the stack Celery's tracer pushes a task on
from celery.app.task import Context
from celery.app.trace import task_has_custom
from celery.backends.redis import RedisBackend
from celery.canvas import Signature, maybe_signature
from celery.exceptions import ChordError, Retry
from celery.utils.time import get_exponential_backoff_interval
from celery.worker.request import Request
from kombu.message import Message

from ..errors import MalformedMessage
from ..protocol import TaskMessage
from .results import TaskResult

logger = logging.getLogger(__name__)

# Handlers a task may override; Celery calls only the overridden ones.
_HANDLERS = ("before_start", "on_success", "on_failure", "on_retry", "after_return")


@dataclass
class Traced:
    """One sample's Celery request and the context its signals run in."""

    request: Context
    context: contextvars.Context
    prerun: bool = False


@dataclass
class Settled:
    """A batch's results after retries and callbacks, ready to be stored."""

    results: list[TaskResult]
    #: Position -> the retry sent for that sample (state RETRY).
    retries: dict[int, Retry] = field(default_factory=dict)


class TaskTracer:
    """Celery's per-task steps for one batched task, applied to whole batches."""

    def __init__(self, app: Celery, task: Task[Any, Any], hostname: str, consumer: Any = None) -> None:
        self.app = app
        self.task = task
        self.hostname = hostname
        self.consumer = consumer
        self.track_started = bool(task.track_started)
        self.extended = bool(app.conf.find_value_for_key("extended", "result"))
        self.handlers = {name: getattr(task, name) for name in _HANDLERS if task_has_custom(task, name)}
        self.autoretry = bool(getattr(task, "autoretry_for", ()))
        self.pid = os.getpid()

    # -- deciding ------------------------------------------------------------

    def traces(self) -> bool:
        """Whether samples need their Celery request: someone listens, a handler is overridden, retries."""
        return bool(
            self.handlers
            or self.autoretry
            or self.extended
            or self.track_started
            or signals.task_prerun.receivers
            or signals.task_postrun.receivers
            or signals.task_success.receivers
            or signals.task_failure.receivers
            or signals.task_retry.receivers
            or signals.task_revoked.receivers
        )

    @staticmethod
    def needs_request(message: TaskMessage) -> bool:
        """Whether this message carries canvas (callbacks, errbacks, a chain, a chord) to act on."""
        return bool(message.embed)

    def request(self, message: TaskMessage) -> Context:
        """The Celery request context of ``message``, as Celery's worker builds it."""
        properties = message.properties
        fields = dict(message.headers)
        fields.update(
            properties=properties,
            reply_to=properties.get("reply_to"),
            correlation_id=properties.get("correlation_id"),
            hostname=self.hostname,
            delivery_info=message.delivery_info(),
            is_eager=False,
        )
        fields.update(message.embed)
        return Context(fields, args=[message.sample], kwargs={}, called_directly=False)

    # -- received (fetcher thread) -------------------------------------------

    def received(self, messages: Sequence[TaskMessage]) -> None:
        """``task_received`` per message, with a Celery worker request as Celery sends it."""
        if not signals.task_received.receivers:
            return
        for message in messages:
            if message.task_id is None or message.error is not None:
                continue
            kombu_message = Message(
                body=None,
                delivery_tag=message.claimed.tag,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                delivery_info=message.properties.get("delivery_info"),
                properties=message.properties,
                headers=message.headers,
            )
            request = Request(
                kombu_message,
                app=self.app,
                hostname=self.hostname,
                task=self.task,
                body=([message.sample], {}, message.embed),
                headers=message.headers,
                decoded=True,
            )
            self._guarded("task_received", signals.task_received.send, sender=self.consumer, request=request)

    # -- before the batch (predictor thread) --------------------------------

    def before(self, messages: Sequence[TaskMessage], traced: dict[int, Traced]) -> list[TaskMessage]:
        """``task_prerun`` and ``before_start`` per sample; returns those to mark STARTED."""
        started = []
        for message in messages:
            trace = traced.get(id(message))
            if trace is None:
                continue
            trace.context.run(self._prerun, message, trace)
            if self.track_started and not self._ignores_result(message):
                started.append(message)
        return started

    def started_result(self, message: TaskMessage, trace: Traced) -> TaskResult:
        """The STARTED record Celery writes with ``task_track_started``."""
        return TaskResult(
            task_id=message.task_id or "",
            state=states.STARTED,
            value={"pid": self.pid, "hostname": self.hostname},
            store_once=message.redelivered,
            request=trace.request,
        )

    def _prerun(self, message: TaskMessage, trace: Traced) -> None:
        self.task.request_stack.push(trace.request)
        try:
            trace.prerun = True
            if signals.task_prerun.receivers:
                self._guarded(
                    "task_prerun",
                    signals.task_prerun.send,
                    sender=self.task,
                    task_id=message.task_id,
                    task=self.task,
                    args=[message.sample],
                    kwargs={},
                )
            handler = self.handlers.get("before_start")
            if handler is not None:
                self._guarded("before_start", handler, message.task_id, [message.sample], {})
        finally:
            self.task.request_stack.pop()

    # -- after the batch (writer thread) -------------------------------------

    def settle(
        self, messages: Sequence[TaskMessage], results: Sequence[TaskResult], traced: dict[int, Traced]
    ) -> Settled:
        """Retries and callbacks, before the results are stored (Celery's order)."""
        settled = Settled(list(results))
        for index, (message, result) in enumerate(zip(messages, results)):
            trace = traced.get(id(message))
            if trace is None:
                continue
            if result.state == states.FAILURE:
                retry = trace.context.run(self._maybe_retry, message, trace, result.value)
                if retry is not None:
                    settled.retries[index] = retry
                    settled.results[index] = replace(result, state=states.RETRY, value=retry.exc)
            elif result.state == states.SUCCESS and (message.embed.get("callbacks") or message.embed.get("chain")):
                error = trace.context.run(self._send_callbacks, message, trace, result.value)
                if error is not None:
                    settled.results[index] = replace(result, state=states.FAILURE, value=error)
        for index, (message, result) in enumerate(zip(messages, settled.results)):
            trace = traced.get(id(message))
            if trace is not None:
                settled.results[index] = replace(result, request=trace.request)
        return settled

    def finish(
        self, messages: Sequence[TaskMessage], settled: Settled, traced: dict[int, Traced], runtime: float
    ) -> None:
        """After the results are stored: chords, errbacks, handlers, signals, ``task_postrun``."""
        for index, (message, result) in enumerate(zip(messages, settled.results)):
            trace = traced.get(id(message))
            if trace is not None and not result.refused:  # a refused duplicate's outcome is another run's
                trace.context.run(self._finish_one, message, trace, result, settled.retries.get(index), runtime)

    def _finish_one(
        self, message: TaskMessage, trace: Traced, result: TaskResult, retry: Retry | None, runtime: float
    ) -> None:
        task, request = self.task, trace.request
        args: list[Any] = [message.sample]
        task.request_stack.push(request)
        try:
            if request.chord and not self._chord_can_complete(request):
                request.chord = None  # its body was failed instead: there is nothing left to count
            if result.state == states.SUCCESS:
                self._backend_step(
                    "chord",
                    task.backend.mark_as_done,
                    message.task_id,
                    result.value,
                    request=request,
                    store_result=False,
                )
                self._handler("on_success", result.value, message.task_id, args, {})
                if signals.task_success.receivers:
                    self._guarded(
                        "task_success", signals.task_success.send, sender=task, result=result.value, runtime=runtime
                    )
            elif result.state == states.RETRY:
                einfo = _einfo(result.value)
                self._handler("on_retry", result.value, message.task_id, args, {}, einfo)
                if signals.task_retry.receivers:
                    self._guarded(
                        "task_retry", signals.task_retry.send, sender=task, request=request, reason=retry, einfo=einfo
                    )
            elif result.state == states.REVOKED:
                self._backend_step(
                    "chord",
                    task.backend.mark_as_revoked,
                    message.task_id,
                    str(result.value),
                    request=request,
                    store_result=False,
                )
                if signals.task_revoked.receivers:
                    reason = str(result.value)
                    self._guarded(
                        "task_revoked",
                        signals.task_revoked.send,
                        sender=task,
                        request=request,
                        terminated=reason == "terminated",
                        signum=None,
                        expired=reason == "expired",
                    )
            else:
                self._fail(message, trace, result, args)
            if result.state not in (states.RETRY, states.REVOKED):
                self._handler("after_return", result.state, result.value, message.task_id, args, {}, None)
            if trace.prerun and signals.task_postrun.receivers:
                self._guarded(
                    "task_postrun",
                    signals.task_postrun.send,
                    sender=task,
                    task_id=message.task_id,
                    task=task,
                    args=args,
                    kwargs={},
                    retval=result.value,
                    state=result.state,
                )
        finally:
            task.request_stack.pop()

    def _chord_can_complete(self, request: Context) -> bool:
        """Whether the chord's counter is still in Redis; if not, fail its body with a ChordError.

        Celery's Redis backend silently never runs a body whose chord size key
        expired or was deleted; its callers would wait forever.
        """
        backend = self.task.backend
        if not isinstance(backend, RedisBackend) or backend.client.exists(
            backend.get_key_for_group(request.group or "", ".s")
        ):
            return True
        callback = self._signature(request.chord)
        try:  # raised, so that Celery's chord_error_from_stack finds it on the stack, as it expects
            raise ChordError(
                f"chord {request.group}: its counter is gone from the result backend (expired or deleted), "
                f"so its body {callback.task} can never run"
            )
        except ChordError as exc:
            self._guarded("chord error", backend.chord_error_from_stack, callback, exc)
        return False

    def _fail(self, message: TaskMessage, trace: Traced, result: TaskResult, args: list[Any]) -> None:
        """Celery's failure steps: chord, failed chain, errbacks, ``on_failure``, ``task_failure``."""
        task, exc = self.task, result.value
        einfo = _einfo(exc)
        self._backend_step(
            "failure",
            task.backend.mark_as_failure,
            message.task_id,
            exc,
            einfo.traceback,
            request=trace.request,
            store_result=False,
            call_errbacks=True,
        )
        self._handler("on_failure", exc, message.task_id, args, {}, einfo)
        if signals.task_failure.receivers:
            self._guarded(
                "task_failure",
                signals.task_failure.send,
                sender=task,
                task_id=message.task_id,
                exception=exc,
                args=args,
                kwargs={},
                traceback=exc.__traceback__,
                einfo=einfo,
            )

    def _maybe_retry(self, message: TaskMessage, trace: Traced, exc: BaseException) -> Retry | None:
        """``autoretry_for``: re-send this sample alone with its countdown, as Celery's wrapper does."""
        task = self.task
        autoretry_for = tuple(getattr(task, "autoretry_for", ()) or ())
        dont_autoretry_for = tuple(getattr(task, "dont_autoretry_for", ()) or ())
        if not autoretry_for or not isinstance(exc, autoretry_for) or isinstance(exc, dont_autoretry_for):
            return None
        if not isinstance(exc, Exception):
            return None
        options = dict(getattr(task, "retry_kwargs", None) or {})
        retry_backoff = float(getattr(task, "retry_backoff", False) or 0)
        if retry_backoff:
            options["countdown"] = get_exponential_backoff_interval(
                factor=int(max(1.0, retry_backoff)),
                retries=trace.request.retries or 0,
                maximum=int(getattr(task, "retry_backoff_max", 600)),
                full_jitter=getattr(task, "retry_jitter", True),
            )
        with self._running(trace.request):
            try:
                return task.retry(exc=exc, throw=False, **options)
            except Exception as final:  # noqa: BLE001 - out of retries: Celery re-raises the task's own exception
                if final is not exc:
                    logger.debug("%s[%s]: retry refused: %r", task.name, message.task_id, final)
                return None

    def _send_callbacks(self, message: TaskMessage, trace: Traced, value: Any) -> BaseException | None:
        """``link`` callbacks and the next chain step get the result, as Celery sends them."""
        request = trace.request
        root_id = request.root_id or message.task_id
        inherit = self.app.conf.task_inherit_parent_priority
        priority = (request.delivery_info or {}).get("priority") if inherit else None
        with self._running(request):
            return self._apply_callbacks(message, request, value, root_id, priority)

    def _apply_callbacks(
        self, message: TaskMessage, request: Context, value: Any, root_id: str | None, priority: Any
    ) -> BaseException | None:
        try:
            callbacks = request.callbacks or []
            signatures = [self._signature(callback) for callback in callbacks]
            groups = [sig for sig in signatures if isinstance(sig, group)]
            singles = [sig for sig in signatures if not isinstance(sig, group)]
            for group_ in groups:
                group_.apply_async((value,), parent_id=message.task_id, root_id=root_id, priority=priority)
            if len(singles) == 1:
                singles[0].apply_async((value,), parent_id=message.task_id, root_id=root_id, priority=priority)
            elif singles:
                group(singles, app=self.app).apply_async(
                    (value,), parent_id=message.task_id, root_id=root_id, priority=priority
                )
            chain = request.chain
            if chain:
                following = self._signature(chain[-1])
                following.apply_async(
                    (value,), chain=chain[:-1], parent_id=message.task_id, root_id=root_id, priority=priority
                )
        except Exception as exc:  # noqa: BLE001 - a callback that cannot be sent fails its task
            return MalformedMessage(
                f"{self.task.name}[{message.task_id}]: cannot send the task's callbacks or next chain step "
                f"({type(exc).__name__}: {exc})"
            )
        return None

    # -- helpers ------------------------------------------------------------

    def _signature(self, embedded: Any) -> Signature[Any]:
        """A signature of the message's canvas (a dict on the wire; celery-types calls these fields str)."""
        signature = maybe_signature(embedded, app=self.app)
        if signature is None:
            raise MalformedMessage(f"{self.task.name}: an empty signature in the message's canvas")
        return cast("Signature[Any]", signature)  # a Signature, or a group (a Signature subclass)

    @contextmanager
    def _running(self, request: Context) -> Iterator[None]:
        """The task and its request current, as while Celery runs it: what it sends becomes its child."""
        _task_stack.push(self.task)
        self.task.request_stack.push(request)
        try:
            yield
        finally:
            self.task.request_stack.pop()
            _task_stack.pop()

    def _ignores_result(self, message: TaskMessage) -> bool:
        return bool(message.ignore_result or self.task.ignore_result)

    def _handler(self, name: str, *args: Any) -> None:
        handler = self.handlers.get(name)
        if handler is not None:
            self._guarded(name, handler, *args)

    def _backend_step(self, what: str, step: Any, *args: Any, **kwargs: Any) -> None:
        """Celery's own chord / chain / errback handling; its failure is logged, never fatal."""
        request = kwargs.get("request")
        if request is None or not (request.chord or request.chain or request.errbacks):
            return
        self._guarded(f"{what} handling", step, *args, **kwargs)

    def _guarded(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except Exception:
            logger.exception("%s: %s raised", self.task.name, what)
            return None


def _einfo(exc: BaseException) -> ExceptionInfo:
    """Celery's ``ExceptionInfo`` for an exception caught earlier (its traceback kept)."""
    return ExceptionInfo((type(exc), exc, exc.__traceback__))


def new_trace(tracer: TaskTracer, message: TaskMessage) -> Traced:
    """A sample's trace: its request, in a context copied from this thread's."""
    return Traced(tracer.request(message), contextvars.copy_context())
