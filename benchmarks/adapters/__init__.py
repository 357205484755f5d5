"""Client-side adapters: one way to send one request, per system compared.

A client process (:mod:`benchmarks.client`) holds one adapter and drives it
from many threads. Each adapter module imports only what its system needs,
so the anchors' venv and the project's venv each import just their own.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any

from ..models import BenchModel

# System name -> "module:class" of its adapter (imported lazily).
ADAPTERS = {
    "direct": "inprocess:DirectAdapter",
    "naive": "inprocess:NaiveAdapter",
    "threaded": "service_streamer:ThreadedAdapter",
    "streamer": "service_streamer:StreamerAdapter",
    "redis_streamer": "service_streamer:RedisStreamerAdapter",
    "celery": "celery_tasks:PlainCeleryAdapter",
    "celery_batches": "celery_tasks:CeleryBatchesAdapter",
    "ours": "celery_tasks:OursAdapter",
    "ours_celery_client": "celery_tasks:OursCeleryClientAdapter",
    "ours_kombu_json": "celery_tasks:OursKombuJsonAdapter",
    "ours_single_replies": "celery_tasks:OursSingleRepliesAdapter",
    "ours_local": "inprocess:OursLocalAdapter",
}


class Adapter(ABC):
    """Sends requests of one sample each and waits for their results.

    ``call`` must be safe to use from many threads at once. ``submit`` and
    ``wait`` split a request in two, so the drain workload can fill a queue
    before any worker runs.
    """

    #: True when the system runs full batches itself (``direct``): the
    #: saturation and drain workloads then call :meth:`call_batch`.
    full_batches = False

    def __init__(self, model: str, device: str, workers: int, redis_url: str | None) -> None:
        self.model_name = model
        self.device = device
        self.workers = workers
        self.redis_url = redis_url

    @abstractmethod
    def submit(self, sample: Any) -> Any:
        """Send one request; return a handle for :meth:`wait`."""

    @abstractmethod
    def wait(self, handle: Any, timeout: float) -> Any:
        """The result of a submitted request."""

    def call(self, sample: Any, timeout: float) -> Any:
        """One request, start to finish."""
        return self.wait(self.submit(sample), timeout)

    def call_batch(self, samples: list[Any]) -> list[Any]:
        """Only for ``full_batches`` systems."""
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional: an adapter holding nothing keeps this no-op
        """Release threads, connections and child processes."""


def load(system: str, model: str, device: str = "cpu", workers: int = 1, redis_url: str | None = None) -> Adapter:
    """The adapter of ``system``, connected and ready to send."""
    try:
        target = ADAPTERS[system]
    except KeyError:
        raise ValueError(f"unknown system {system!r}; choose from {sorted(ADAPTERS)}") from None
    module_name, class_name = target.split(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)(model, device, workers, redis_url)


def local_model(adapter: Adapter) -> BenchModel:
    """The bench model, loaded in this (client) process."""
    from ..models import build

    return build(adapter.model_name, adapter.device)
