"""What each endpoint asks of the workers, built from a checked request.

Each function takes the decoded JSON body, rejects bad input with
:class:`~.validation.BadRequest` before anything is sent, and returns the
:class:`~.service.Job` to run with the function that shapes its answer.
"""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings

from . import tasks
from .service import ApiError, Job
from .validation import Limits, read_query, read_texts, require_mask


def limits() -> Limits:
    return Limits(max_texts=settings.DEMO_MAX_TEXTS, max_chars=settings.DEMO_MAX_TEXT_CHARS)


def embed_job(payload: dict[str, Any]) -> Job:
    texts, single = read_texts(payload, limits())

    def respond(vectors: list[list[float]]) -> dict[str, Any]:
        body: dict[str, Any] = {"embedding": vectors[0]} if single else {"embeddings": vectors}
        body["dim"] = len(vectors[0])
        return body

    return Job(tasks.embed, texts, respond)


def similarity_job(payload: dict[str, Any]) -> Job:
    query, texts = read_query(payload, limits())

    def respond(vectors: list[list[float]]) -> dict[str, Any]:
        scored = [{"text": text, "score": cosine(vectors[0], vector)} for text, vector in zip(texts, vectors[1:])]
        return {"query": query, "results": sorted(scored, key=lambda item: -item["score"])}

    return Job(tasks.embed, [query, *texts], respond)


def fill_mask_job(payload: dict[str, Any]) -> Job:
    if not settings.FILL_MASK_CHECKPOINT:
        raise ApiError(
            503,
            "fill-mask is not configured: set FILL_MASK_CHECKPOINT to a local masked-LM checkpoint directory "
            "(e.g. a copy of bert-base-uncased saved with save_pretrained) for the web server and the worker, "
            "and run a worker with -Q fill_mask. Embeddings and similarity work without it.",
            setting="FILL_MASK_CHECKPOINT",
        )
    texts, single = read_texts(payload, limits())
    require_mask(texts, single)

    def respond(per_text: list[list[list[dict[str, Any]]]]) -> dict[str, Any]:
        if single:
            return {"text": texts[0], "masks": per_text[0]}
        return {"results": [{"text": text, "masks": masks} for text, masks in zip(texts, per_text)]}

    return Job(tasks.fill_mask, texts, respond)


def cosine(a: list[float], b: list[float]) -> float:
    """Cosine similarity, rounded for display (MiniLM vectors are unit length, but any are accepted)."""
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return round(sum(x * y for x, y in zip(a, b)) / norm, 4) if norm else 0.0
