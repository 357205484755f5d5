"""Remote-control commands of a batching worker.

Celery's ``inspect().active_queues()`` cannot tell which worker serves a
batched queue: the batching bootstep takes those queues away from Celery's own
consumer. So each worker answers ``batched_queues`` with the queues its batched
consumers are serving (a worker still loading its model serves none yet);
:func:`celery_batching.client.directory.serving_workers` asks for it.

Importing this module registers the commands; the bootstep imports it.
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import inspect_command

from ..protocol import SERVING_COMMAND

#: The label of the batching bootstep, by which the commands find it in the worker.
STEP_LABEL = "celery-batching"


@inspect_command(name=SERVING_COMMAND)
def batched_queues(state: Any) -> list[str]:
    """The batched queues this worker is serving now."""
    steps = state.consumer.controller.blueprint.steps.values()
    return sorted({c.spec.queue for step in steps if step.label == STEP_LABEL for c in step.consumers})
