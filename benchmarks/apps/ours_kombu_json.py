"""celery-batching's batched task with kombu's JSON instead of the orjson codec.

The same app and workers as :mod:`benchmarks.apps.ours`, with
``batching_fast_json = False``: results are encoded, replies and claimed
messages decoded by kombu's JSON, as before :mod:`celery_batching.fastjson`.
Run beside ``ours``, it is the before/after of the fast codec in one run.
"""

from __future__ import annotations

from .ours import app, task

app.conf.batching_fast_json = False

__all__ = ["app", "task"]
