"""Both bundled models as batched tasks, for end-to-end tests through a real worker.

``CB_TINY_BERT`` names a tiny masked-LM checkpoint built by the test.
"""

from __future__ import annotations

import os

from celery import Celery

from celery_batching import batched
from celery_batching.models.embeddings import MiniLMEmbedder
from celery_batching.models.fill_mask import FillMaskModel

BROKER = os.environ["CB_TEST_BROKER"]

app = Celery("models_app", broker=BROKER, backend=BROKER.rsplit("/", 1)[0] + "/1")

embed = batched(app, model=MiniLMEmbedder, name="models_app.embed", max_batch_size=16)
fill_mask = batched(
    app,
    model=FillMaskModel,
    name="models_app.fill_mask",
    max_batch_size=16,
    model_options={"checkpoint": os.environ.get("CB_TINY_BERT", ""), "top_k": 3},
)
