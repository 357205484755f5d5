"""Which worker serves which batched queue, asked of the workers themselves.

Celery's ``inspect().active_queues()`` cannot tell: the batching bootstep
takes batched queues away from Celery's own consumer. So each worker answers
a remote-control command, ``batched_queues``, with the queues its batched
consumers are serving (a worker still loading its model serves none yet), and
:func:`serving_workers` gathers the answers. A web process uses it to answer
"no worker" at once rather than send a task nobody will run.

Importing this module registers the command; a worker process must import it.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.worker.control import inspect_command

# The remote-control command a worker answers.
COMMAND = "batched_queues"


@inspect_command(name=COMMAND)
def batched_queues(state: Any) -> list[str]:
    """The batched queues this worker is serving now."""
    from .bootstep import BatchingStep

    steps = state.consumer.controller.blueprint.steps.values()
    return sorted({c.spec.queue for step in steps if isinstance(step, BatchingStep) for c in step.consumers})


def serving_workers(app: Celery, timeout: float = 1.0) -> dict[str, list[str]]:
    """Queue name -> names of the workers that answered within ``timeout`` seconds serving it.

    Blocks for the whole ``timeout`` (replies are collected until then), so
    call it off the request path. Broker errors propagate.
    """
    replies = app.control.broadcast(COMMAND, reply=True, timeout=timeout) or []
    served: dict[str, set[str]] = {}
    for reply in replies:
        for hostname, queues in reply.items():
            if isinstance(queues, list):  # a worker without the command answers {"error": ...}
                for queue in queues:
                    served.setdefault(queue, set()).add(hostname)
    return {queue: sorted(hosts) for queue, hosts in sorted(served.items())}
