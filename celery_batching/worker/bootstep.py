"""The worker bootstep that serves batched queues; installed by ``batched()``.

A plain ``celery -A proj worker`` then serves, with a
:class:`~celery_batching.worker.consumer.BatchedQueueConsumer` each, the queues of
every batched task of the app (narrowed by ``-Q``/``-X`` as usual), and takes
those queues away from Celery's own consumer. Models are loaded before the
worker's consumer starts, so the worker reports ready only once they are; its
``/ready`` probe, likewise, only once every model loaded and every batched
consumer claims, and never after a model failed to load.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, bootsteps
from celery.utils.imports import symbol_by_name

from ..client.backends import check_result_backend
from ..client.task import QUEUE_OPTIONS_ATTR, BatchedTask
from ..deploy.devices import resolve_device
from ..engine.hooks import BatchHooks
from ..errors import ConfigurationError, ModelLoadError
from ..models.base import ManagedModel
from . import control
from .consumer import BatchedQueueConsumer, QueueSpec
from .depth import DepthReader, visibility_timeout
from .metrics import QueueDepthCollector, start_metrics
from .probes import Readiness

logger = logging.getLogger(__name__)


def batched_tasks(app: Celery) -> list[BatchedTask[Any, Any]]:
    return sorted((t for t in app.tasks.values() if isinstance(t, BatchedTask)), key=lambda t: t.name)


def select_served(
    tasks: list[BatchedTask[Any, Any]], include: list[str], exclude: list[str]
) -> list[BatchedTask[Any, Any]]:
    """The batched tasks a worker started with ``-Q include -X exclude`` serves."""
    return [t for t in tasks if (not include or t.batch_queue in include) and t.batch_queue not in exclude]


def deselect_for_good(app: Celery, names: list[str]) -> None:
    """Keep Celery's own consumer off the queues ``names``, on every Celery version.

    Without ``-Q``, Celery before 5.7 consumes every queue the app knows when
    its consumer starts, including one added after this step runs (the batched
    consumer's lookup of its queue adds it). So each queue is added first,
    as Celery adds a missing one, and then deselected: the selection Celery
    then keeps is explicit and leaves it out.
    """
    queues = app.amqp.queues
    for name in names:
        if name not in queues and queues.create_missing:  # type: ignore[attr-defined]  # not in celery-types
            queues.add(queues.new_missing(name))
    queues.deselect([name for name in names if name in queues.consume_from])


class BatchingStep(bootsteps.StartStopStep):
    """Loads the models and runs one batched consumer per served queue."""

    label = control.STEP_LABEL
    # Before the Consumer step (which is last): ready only once models are loaded.
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        app = worker.app
        include, exclude = getattr(worker, QUEUE_OPTIONS_ATTR, ([], []))
        self.tasks = select_served(batched_tasks(app), include, exclude)
        self.consumers: list[BatchedQueueConsumer] = []
        self.readiness = Readiness(len(self.tasks))
        served = [task.batch_queue for task in self.tasks]
        if served:
            # Celery's own consumer must not take these messages one by one.
            deselect_for_good(app, served)

    def include_if(self, worker: Any) -> bool:
        return bool(self.tasks)

    def start(self, worker: Any) -> None:
        # Again here: the backend may have been configured after the tasks were declared.
        check_result_backend(worker.app, f"worker {worker.hostname}")
        hooks = worker_hooks(worker.app)
        depth = QueueDepthCollector()
        exporter = start_metrics(worker.app, self.readiness, depth)
        if exporter is not None:
            hooks.append(exporter)
        for task in self.tasks:
            try:
                spec = self._spec(worker.app, task)
            except Exception as exc:  # the worker stops; /ready says why until it has
                self.readiness.fail(str(exc))
                raise
            consumer = BatchedQueueConsumer(
                worker.app, spec, worker.hostname, bool(worker.task_events), hooks, getattr(worker, "consumer", None)
            )
            consumer.start()
            self.consumers.append(consumer)
            self.readiness.add(consumer.claiming.is_set)
            depth.add(DepthReader(consumer.queue, visibility_timeout(worker.app)))
            logger.info(
                "celery-batching: serving %s from queue %r (max_batch_size=%s, max_wait=%ss)",
                task.name,
                task.batch_queue,
                task.batch_policy.max_batch_size,
                task.batch_policy.max_wait,
            )

    def stop(self, worker: Any) -> None:
        self.readiness.fail("the worker is stopping")
        for consumer in self.consumers:
            consumer.request_stop()  # all fetchers wind down together
        while self.consumers:
            self.consumers.pop().stop()

    def shutdown(self, worker: Any) -> None:
        self.stop(worker)

    def terminate(self, worker: Any) -> None:
        """Cold shutdown: give unstarted messages back at once, wait for no batch.

        A running batch's messages stay unacknowledged and come back after the
        visibility timeout, as an ordinary task's do when its worker is killed.
        """
        for consumer in self.consumers:
            consumer.request_stop()
        while self.consumers:
            self.consumers.pop().terminate()

    def _spec(self, app: Celery, task: BatchedTask[Any, Any]) -> QueueSpec:
        if task.model_class is None:
            predict, validate = task.batch_function, None
        else:
            model = load_model(app, task)
            predict, validate = model.predict, model.validate
        assert predict is not None
        return QueueSpec(
            task_name=task.name,
            queue=task.batch_queue,
            policy=task.batch_policy,
            predict=predict,
            validate=validate,
            ignore_result=bool(task.ignore_result),
            max_sample_bytes=task.max_sample_bytes,
            task=task,
        )


def load_model(app: Celery, task: BatchedTask[Any, Any]) -> ManagedModel[Any, Any]:
    """Build, load and warm up ``task``'s model on this worker's device, or stop the worker."""
    if task.model_class is None:
        raise ConfigurationError(f"{task.name} has no model")
    model_name = task.model_class.__name__
    device = resolve_device(app.conf.get("batching_device"))
    try:
        model = task.build_model(device)
        warmup = model.warmup_batch()
        if warmup:
            outputs = list(model.predict(list(warmup)))
            if len(outputs) != len(warmup):
                raise ValueError(f"warm-up returned {len(outputs)} results for {len(warmup)} samples")
    except Exception as exc:
        raise ModelLoadError(
            f"{task.name}: model {model_name} failed to load on {device}: {type(exc).__name__}: {exc}"
        ) from exc
    logger.info("celery-batching: %s loaded %s on %s", task.name, model_name, device)
    return model


def worker_hooks(app: Celery) -> list[BatchHooks]:
    """Hooks configured on the app (``batching_hooks``: instances or import paths)."""
    hooks = []
    for hook in app.conf.get("batching_hooks") or ():
        hooks.append(symbol_by_name(hook)() if isinstance(hook, str) else hook)
    return hooks
