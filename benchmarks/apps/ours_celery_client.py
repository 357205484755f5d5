"""celery-batching's batched task sent and awaited through Celery's own client path.

The same app and workers as :mod:`benchmarks.apps.ours`, with
``batching_fast_client = False``: ``.delay()`` goes through ``apply_async``
and ``.get()`` through Celery's result consumer (a SUBSCRIBE per task). Run
beside ``ours``, it is the before/after of the client fast path in one run.
"""

from __future__ import annotations

from .ours import app, task

app.conf.batching_fast_client = False

__all__ = ["app", "task"]
