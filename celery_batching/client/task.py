"""Declaring a batched task: ``@batched(app, max_batch_size=64)``.

To its callers a batched task is an ordinary Celery task taking one sample
(``.delay(sample)``, ``.apply_async``, ``AsyncResult``, revoke, Flower). Only
its worker differs: the :mod:`~celery_batching.worker.bootstep` installed here makes
every ``celery worker`` of the app serve the task's queue in batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, cast, overload

from celery import Celery, Task
from celery.result import AsyncResult
from celery.signals import celeryd_init
from celery.utils.text import str_to_list

from ..engine.policy import FlushPolicy
from ..errors import ConfigurationError, QueueFull
from ..ids import new_id
from ..models.base import ManagedModel, Output, Sample
from .backends import check_result_backend
from .publish import can_send_fast, send_many
from .push import pushers

logger = logging.getLogger(__name__)

# Largest encoded sample a worker accepts by default; bigger ones fail alone.
DEFAULT_MAX_SAMPLE_BYTES = 1 << 20

#: What ``@batched`` decorates: a list of samples in, one output per sample out, in order.
BatchFn = Callable[[list[Sample]], Sequence[Output]]
#: The worker bootstep, named rather than imported: the client side never loads the worker's code.
WORKER_STEP = "celery_batching.worker.bootstep:BatchingStep"
#: Where the ``-Q``/``-X`` of a starting worker are kept for the bootstep.
QUEUE_OPTIONS_ATTR = "batching_queue_options"


if TYPE_CHECKING:
    #: For type checkers, a batched task is a Celery task of one ``Sample`` argument returning an ``Output``:
    #: celery-types makes ``Task`` generic over its parameters and result, so ``.delay()`` is checked.
    _OneSampleTask = Task[[Sample], Output]
else:

    class _OneSampleTask(Task, Generic[Sample, Output]):
        """At run time: Celery's ``Task``, subscriptable (Celery before 5.7 cannot subscript ``Task``)."""

        abstract = True


class BatchedTask(_OneSampleTask[Sample, Output]):
    """Base class of batched tasks; ``batched()`` fills in the class attributes.

    ``BatchedTask[Sample, Output]``: ``.delay(sample)`` takes a ``Sample`` and
    gives an ``AsyncResult[Output]``.
    """

    abstract = True
    batch_policy: FlushPolicy = FlushPolicy()
    batch_function: BatchFn[Sample, Output] | None = None
    model_class: type[ManagedModel[Sample, Output]] | None = None
    model_options: ClassVar[dict[str, Any]] = {}  # each declared task's class gets its own
    max_sample_bytes: int | None = DEFAULT_MAX_SAMPLE_BYTES
    #: Most messages that may wait on the task's queue; past it a call raises ``QueueFull`` (None: no bound).
    max_queue_depth: int | None = None
    #: The queue the task's batch consumer serves (``task_routes`` do not apply).
    batch_queue: str = ""
    _local_model: ManagedModel[Sample, Output] | None = None

    def apply_async(
        self,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> AsyncResult[Output]:
        """Send to the task's batch queue unless the caller names another queue.

        Plain calls take the fast path of :mod:`~celery_batching.client.publish`;
        anything it does not cover (links, countdown, signal receivers, ...)
        goes through Celery's own ``apply_async``. The positional parameters are
        Celery's; those given join ``options`` as Celery would read them. A call
        past ``max_queue_depth`` raises :class:`~celery_batching.errors.QueueFull`
        at once; a fast-path push never confirmed raises
        :class:`~celery_batching.errors.SendOutcomeUnknown` (never resent through Celery).
        """
        named = {"task_id": task_id, "producer": producer, "link": link, "link_error": link_error, "shadow": shadow}
        options.update((key, value) for key, value in named.items() if value is not None)
        options.setdefault("queue", self.batch_queue)
        if args is not None and can_send_fast(self, args, kwargs, options):
            return send_many(
                self,
                args,
                options["queue"],
                task_ids=[options.get("task_id") or new_id()],
                expires=options.get("expires", self.expires),
                ignore_result=options.get("ignore_result"),
                serializer=options.get("serializer"),
                compression=options.get("compression"),
            )[0]
        check_result_backend(self.app, self.name, self.app.backend)  # configured after declaration?
        if self.max_queue_depth:
            self._check_depth(options["queue"], self.max_queue_depth)
        return super().apply_async(args, kwargs, **options)

    def _check_depth(self, queue: str, bound: int) -> None:
        """The bound on Celery's own path: read, then sent, so concurrent callers may pass it by a few."""
        depth = pushers.get(self.app).depth(queue)
        if depth >= bound:
            raise QueueFull(queue, depth, bound)

    def run_one(self, sample: Sample) -> Output:
        """Run one sample in this process (a direct call or ``apply()``): a batch of one."""
        if self.batch_function is not None:
            outputs = list(self.batch_function([sample]))
        else:
            model = self._local_model
            if model is None:
                model = type(self)._local_model = self.build_model("cpu")
            outputs = list(model.predict([sample]))
        return outputs[0]  # IndexError, not a StopIteration leaking out, when predict returns nothing

    def build_model(self, device: str) -> ManagedModel[Sample, Output]:
        """Build and load this task's model on ``device`` (once per worker process)."""
        if self.model_class is None:
            raise ConfigurationError(f"{self.name} has no model")
        model = self.model_class(device=device, **self.model_options)
        model.init_model()
        return model


_OWN_OPTIONS = {
    "max_batch_size",
    "max_wait",
    "queue",
    "name",
    "model",
    "model_options",
    "max_sample_bytes",
    "max_queue_depth",
}


class BatchedDecorator(Protocol):
    """What ``batched(app, ...)`` without ``model=`` returns: it types the task after the function it decorates."""

    def __call__(self, function: BatchFn[Sample, Output], /) -> BatchedTask[Sample, Output]: ...


@overload
def batched(
    app: Celery,
    *,
    max_batch_size: int = ...,
    max_wait: float = ...,
    queue: str | None = ...,
    name: str | None = ...,
    model: type[ManagedModel[Sample, Output]],
    model_options: dict[str, Any] | None = ...,
    max_sample_bytes: int | None = ...,
    max_queue_depth: int | None = ...,
    **task_options: Any,
) -> BatchedTask[Sample, Output]: ...
@overload
def batched(
    app: Celery,
    *,
    max_batch_size: int = ...,
    max_wait: float = ...,
    queue: str | None = ...,
    name: str | None = ...,
    model: None = ...,
    model_options: None = ...,
    max_sample_bytes: int | None = ...,
    max_queue_depth: int | None = ...,
    **task_options: Any,
) -> BatchedDecorator: ...


def batched(
    app: Celery,
    *,
    max_batch_size: int = 64,
    max_wait: float = 0.0,
    queue: str | None = None,
    name: str | None = None,
    model: type[ManagedModel[Any, Any]] | None = None,
    model_options: dict[str, Any] | None = None,
    max_sample_bytes: int | None = DEFAULT_MAX_SAMPLE_BYTES,
    max_queue_depth: int | None = None,
    **task_options: Any,
) -> BatchedTask[Any, Any] | BatchedDecorator:
    """Declare a batched task on ``app``.

    As a decorator, the function receives a list of samples and returns a list
    of results in the same order. With ``model=`` (a :class:`ManagedModel`
    subclass) the task is returned directly and the model is built in each
    worker process that serves it. ``queue`` defaults to the task's name.
    ``max_queue_depth`` bounds how many messages may wait on the queue: a call
    that would pass it raises :class:`~celery_batching.errors.QueueFull` at once.
    Other keyword arguments are Celery task options (``ignore_result``, ...).
    Options are checked here, at declaration, not when the first task runs.
    """
    policy = FlushPolicy(max_batch_size=max_batch_size, max_wait=max_wait)
    user_base = _user_base(task_options.pop("base", None))
    _check_task_options(task_options)
    if max_sample_bytes is not None and (not isinstance(max_sample_bytes, int) or max_sample_bytes < 1):
        raise ConfigurationError(f"max_sample_bytes must be a positive int or None, got {max_sample_bytes!r}")
    if max_queue_depth is not None and (
        not isinstance(max_queue_depth, int) or isinstance(max_queue_depth, bool) or max_queue_depth < 1
    ):
        raise ConfigurationError(f"max_queue_depth must be a positive int or None, got {max_queue_depth!r}")
    if model is not None and not (isinstance(model, type) and issubclass(model, ManagedModel)):
        raise ConfigurationError(f"model must be a ManagedModel subclass, got {model!r}")
    if model_options is not None and model is None:
        raise ConfigurationError("model_options given without model=")

    _check_backend_if_readable(app)
    _install_worker_side(app)

    def declare(origin: Any, function: BatchFn[Any, Any] | None, task_name: str) -> BatchedTask[Any, Any]:
        # type() builds the subclass a class statement would; type checkers cannot see through it.
        base = cast(
            "type[BatchedTask[Any, Any]]",
            type(
                "BatchedTask",
                (BatchedTask,) if user_base is None else (BatchedTask, user_base),
                dict(
                    batch_policy=policy,
                    batch_function=staticmethod(function) if function is not None else None,
                    model_class=model,
                    model_options=dict(model_options or {}),
                    max_sample_bytes=max_sample_bytes,
                    max_queue_depth=max_queue_depth,
                    batch_queue=queue or task_name,
                ),
            ),
        )
        # With options as **kwargs no overload of app.task can be picked; this is the one that applies.
        register: Callable[[Callable[..., Any]], BatchedTask[Any, Any]] = app.task(
            name=task_name, base=base, bind=True, **task_options
        )
        return register(_one_sample_body(origin))

    if model is not None:
        return declare(model, None, name or f"{model.__module__}.{model.__name__}")

    def decorator(function: BatchFn[Any, Any], /) -> BatchedTask[Any, Any]:
        if not callable(function):
            raise ConfigurationError(f"@batched must decorate a function taking a list, got {function!r}")
        return declare(function, function, name or f"{function.__module__}.{function.__qualname__}")

    return decorator


def _install_worker_side(app: Celery) -> None:
    """Make every ``celery worker`` of ``app`` serve its batched queues (idempotent)."""
    app.steps["worker"].add(WORKER_STEP)
    celeryd_init.connect(_remember_queue_options, weak=False, dispatch_uid="celery-batching-queues")


def _remember_queue_options(sender: Any = None, instance: Any = None, options: Any = None, **_: Any) -> None:
    """Keep ``-Q``/``-X`` on the worker: Celery consumes them before bootsteps see their options.

    Connected when a task is declared, because ``celeryd_init`` fires before
    the worker loads its bootsteps.
    """
    options = options or {}
    setattr(
        instance,
        QUEUE_OPTIONS_ATTR,
        (
            str_to_list(options.get("queues")) or [],
            str_to_list(options.get("exclude_queues")) or [],
        ),
    )


def _one_sample_body(origin: Any) -> Callable[..., Any]:
    """The body Celery registers: one sample; named and documented after ``origin``."""

    def run(self: BatchedTask[Any, Any], sample: Any) -> Any:
        return self.run_one(sample)

    run.__name__ = origin.__name__
    run.__qualname__ = origin.__qualname__
    run.__module__ = origin.__module__
    run.__doc__ = origin.__doc__
    return run


def _user_base(base: Any) -> type[Task[Any, Any]] | None:
    """A ``base=`` Task class whose handlers (``on_success``, ...) the batched task keeps."""
    if base is None:
        return None
    if not (isinstance(base, type) and issubclass(base, Task)):
        raise ConfigurationError(f"base must be a celery.Task subclass, got {base!r}")
    return base


# Celery task options that Celery reads with a default instead of declaring on Task.
_CELERY_RETRY_OPTIONS = frozenset(
    {"autoretry_for", "dont_autoretry_for", "retry_kwargs", "retry_backoff", "retry_backoff_max", "retry_jitter"}
)


def _check_backend_if_readable(app: Celery) -> None:
    """Refuse an unsupported result backend now, if the app's configuration can be read yet.

    A configuration that cannot be loaded at declaration (Django settings not set up yet,
    say) is Celery's to report later; the backend is checked again at send and at worker start.
    """
    try:
        check_result_backend(app, "batched()")
    except ConfigurationError:
        raise
    except Exception:  # see the docstring
        logger.debug("celery-batching: result backend not checked at declaration", exc_info=True)


def _check_task_options(options: dict[str, Any]) -> None:
    unknown = sorted(key for key in options if not hasattr(Task, key) and key not in _CELERY_RETRY_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {unknown} for a batched task; batching options are "
            f"{sorted(_OWN_OPTIONS)} and the rest must be Celery task options"
        )
