"""Systems reached through a Celery task: ``task.delay(sample)`` then ``.get()``.

This is what a Django view does, so all three Celery-based systems (plain
Celery, celery-batches, ours) are driven by the same client code and differ
only in the app module their workers and clients import.
"""

from __future__ import annotations

import importlib
from typing import Any

from celery.result import AsyncResult

from . import Adapter


class _TaskAdapter(Adapter):
    #: Module holding ``app`` and ``task`` (it reads the model and Redis URL from the environment).
    app_module = ""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        module = importlib.import_module(self.app_module)
        self._app = module.app
        self._task = module.task

    def submit(self, sample: Any) -> AsyncResult:
        return self._task.delay(sample)

    def wait(self, handle: AsyncResult, timeout: float) -> Any:
        return handle.get(timeout=timeout)

    def close(self) -> None:
        self._app.close()


class PlainCeleryAdapter(_TaskAdapter):
    """An ordinary Celery task per sample: predict([x]) in the worker."""

    app_module = "benchmarks.apps.celery_plain"


class CeleryBatchesAdapter(_TaskAdapter):
    """celery-batches' ``Batches`` task, results stored per request."""

    app_module = "benchmarks.anchors.celery_batches_app"


class OursAdapter(_TaskAdapter):
    """celery-batching's ``batched`` task."""

    app_module = "benchmarks.apps.ours"


class OursCeleryClientAdapter(_TaskAdapter):
    """The same batched task through Celery's own publish and result path (the fast path's "before")."""

    app_module = "benchmarks.apps.ours_celery_client"


class OursKombuJsonAdapter(_TaskAdapter):
    """The same batched task with kombu's JSON for results, replies and claimed messages (the codec's "before")."""

    app_module = "benchmarks.apps.ours_kombu_json"


class OursSingleRepliesAdapter(_TaskAdapter):
    """The same batched task with one reply message per task (batched replies' "before")."""

    app_module = "benchmarks.apps.ours_single_replies"
