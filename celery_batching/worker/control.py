"""Remote-control commands of a batching worker.

Celery's ``inspect().active_queues()`` cannot tell which worker serves a
batched queue: the batching bootstep takes those queues away from Celery's own
consumer. So each worker answers ``batched_queues`` with the queues its batched
consumers are serving (a worker still loading its model serves none yet);
:func:`celery_batching.client.directory.serving_workers` asks for it.

Celery's ``inspect active``, ``reserved`` and ``query_task`` answer from the
worker's own request registry, which batched tasks never enter; here each of
those commands is extended with what the batched consumers hold
(:mod:`~celery_batching.worker.held`), so ``celery inspect`` and Flower list
batched tasks like any other. ``revoke(terminate=True)`` of a task in a running
batch cannot stop ``predict`` (the batch's other samples share it): the sample's
outcome is thrown away when the batch returns, and the task ends REVOKED
(terminated), as a terminated ordinary task does.

Importing this module registers the commands; the bootstep imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from functools import wraps
from typing import Any

from celery.utils.functional import maybe_list
from celery.worker import state as worker_state
from celery.worker.control import Panel, inspect_command, ok  # type: ignore[attr-defined]  # ok is unstubbed

from ..protocol import SERVING_COMMAND
from .held import ACTIVE, RESERVED, HeldTasks

#: The label of the batching bootstep, by which the commands find it in the worker.
STEP_LABEL = "celery-batching"


def batched_consumers(state: Any) -> Iterator[Any]:
    """The batched queue consumers of this worker."""
    for step in state.consumer.controller.blueprint.steps.values():
        if step.label == STEP_LABEL:
            yield from step.consumers


def held_tasks(state: Any) -> Iterator[HeldTasks]:
    """What every batched consumer of this worker holds."""
    for consumer in batched_consumers(state):
        yield consumer.held


@inspect_command(name=SERVING_COMMAND)
def batched_queues(state: Any) -> list[str]:
    """The batched queues this worker is serving now."""
    steps = state.consumer.controller.blueprint.steps.values()
    return sorted({c.spec.queue for step in steps if step.label == STEP_LABEL for c in step.consumers})


def _extend(name: str, extension: Callable[..., Any]) -> None:
    """Replace Celery's command ``name`` (and its aliases) by ``extension(original, state, ...)``."""
    original = Panel.data[name]
    if getattr(original, "batching_extended", False):
        return

    @wraps(original)
    def command(state: Any, *args: Any, **kwargs: Any) -> Any:
        return extension(original, state, *args, **kwargs)

    command.batching_extended = True  # type: ignore[attr-defined]
    for key, value in list(Panel.data.items()):
        if value is original:
            Panel.data[key] = command


def _active(original: Callable[..., Any], state: Any, safe: bool = False, **kwargs: Any) -> list[Any]:
    return [*original(state, safe=safe, **kwargs), *(i for held in held_tasks(state) for i in held.infos(ACTIVE, safe))]


def _reserved(original: Callable[..., Any], state: Any, **kwargs: Any) -> list[Any]:
    return [*original(state, **kwargs), *(i for held in held_tasks(state) for i in held.infos(RESERVED))]


def _query_task(original: Callable[..., Any], state: Any, ids: Any, **kwargs: Any) -> dict[str, Any]:
    found = dict(original(state, ids, **kwargs))
    for held in held_tasks(state):
        found.update(held.query(maybe_list(ids) or []))
    return found


def _scheduled(original: Callable[..., Any], state: Any, **kwargs: Any) -> list[Any]:
    """Celery's scheduled list, with the ETA tasks waiting in each batched queue's scheduled set.

    The set belongs to the queue, so every worker serving it lists the same tasks.
    """
    waiting = [
        {
            "eta": datetime.fromtimestamp(eta, timezone.utc).isoformat(),
            "priority": message.properties.get("priority"),
            "request": consumer.held.info(message),
        }
        for consumer in batched_consumers(state)
        for eta, message in consumer.scheduled()
    ]
    return [*original(state, **kwargs), *waiting]


def _revoke(
    original: Callable[..., Any], state: Any, task_id: Any, terminate: bool = False, signal: Any = None, **kwargs: Any
) -> Any:
    """Celery's revoke, except for tasks in a running batch, which only ``terminate`` affects."""
    task_ids = set(maybe_list(task_id) or [])
    running = {t for held in held_tasks(state) for t in held.running(task_ids)}
    if running:
        worker_state.revoked.update(running)  # never run again if delivered again
        if terminate:
            for held in held_tasks(state):
                held.terminate(running)
    rest = task_ids - running
    if rest:
        original(state, list(rest), terminate=terminate, signal=signal, **kwargs)
    return ok(f"tasks {task_ids} flagged as revoked")


_extend("active", _active)
_extend("reserved", _reserved)
_extend("query_task", _query_task)
_extend("scheduled", _scheduled)
_extend("revoke", _revoke)
