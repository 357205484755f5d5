"""celery-batching's batched task with one reply message per task, as before batched replies.

The same app and workers as :mod:`benchmarks.apps.ours`, with
``batching_batch_replies = False``: the client names a reply channel without the
batch marker, so the worker publishes each result to it on its own. Run beside
``ours``, it is the before/after of one PUBLISH per reply channel per batch.
"""

from __future__ import annotations

from .ours import app, task

app.conf.batching_batch_replies = False

__all__ = ["app", "task"]
