"""The baseline batching is measured against: the web process runs the model itself.

Only behind ``INFERENCE_NAIVE=1``, for the benchmark's HTTP workload. Each web
process loads its own MiniLM on first use and runs ``predict([text])`` per
request, one call at a time, as one model on one device runs; Hugging Face's
fast tokenizers also fail when called from several threads at once.
"""

from __future__ import annotations

import threading

from celery_batching.deploy.devices import resolve_device
from celery_batching.models.embeddings import MiniLMEmbedder

_lock = threading.Lock()
_model: list[MiniLMEmbedder] = []  # loaded on the first request


def embed_here(text: str) -> list[float]:
    """``text``'s embedding, computed in this process; raises InvalidSample as the worker would."""
    with _lock:
        if not _model:
            model = MiniLMEmbedder(device=resolve_device())
            model.init_model()
            _model.append(model)
        _model[0].validate(text)
        return _model[0].predict([text])[0]
