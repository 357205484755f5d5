"""The demo's batched tasks; each one is served from the queue of its name.

Declaring them loads no weights: a worker builds a model only for the queues
it consumes (``-Q embed`` needs nothing but the packaged MiniLM model;
``-Q fill_mask`` needs ``FILL_MASK_CHECKPOINT``).
"""

from django.conf import settings

from celery_batching import batched
from celery_batching.models.embeddings import MiniLMEmbedder
from celery_batching.models.fill_mask import FillMaskModel
from django_demo.celery import app

# Candidates returned per [MASK].
FILL_MASK_TOP_K = 5

# Past this many waiting samples a request is refused at once (a 503), not queued to time out.
MAX_QUEUE_DEPTH = settings.DEMO_MAX_QUEUE_DEPTH or None

embed = batched(app, model=MiniLMEmbedder, name="embed", max_batch_size=64, max_queue_depth=MAX_QUEUE_DEPTH)
fill_mask = batched(
    app,
    model=FillMaskModel,
    name="fill_mask",
    max_batch_size=32,
    max_queue_depth=MAX_QUEUE_DEPTH,
    model_options={"checkpoint": settings.FILL_MASK_CHECKPOINT or None, "top_k": FILL_MASK_TOP_K},
)
