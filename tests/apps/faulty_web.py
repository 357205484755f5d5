"""A web front for ``tests.apps.faulty``: the host that takes requests and sends the tasks.

Served by gunicorn (``gunicorn tests.apps.faulty_web:application``) on the
web host of the multi-host run; ``POST /work`` with ``{"samples": [1, 2]}``
sends one ``faulty.work`` task per sample and answers with their results, in
order, once all are in. ``GET /healthz`` answers 200.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from celery_batching import gather, submit_many
from tests.apps.faulty import work

# Longest one request waits for its results: a cut worker's tasks wait a visibility timeout and a restore.
RESULT_TIMEOUT_SECONDS = 120.0

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
    if path == "/healthz":
        return _answer(start_response, "200 OK", {"ok": True})
    if path != "/work" or method != "POST":
        return _answer(start_response, "404 Not Found", {"error": f"no {method} {path}; POST /work"})
    try:
        samples = _samples(environ)
    except ValueError as exc:
        return _answer(start_response, "400 Bad Request", {"error": str(exc)})
    results = submit_many(work, samples)
    values = gather(results, timeout=RESULT_TIMEOUT_SECONDS)
    return _answer(start_response, "200 OK", {"task_ids": [r.id for r in results], "results": values})


def _samples(environ: dict[str, Any]) -> list[int]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    try:
        payload = json.loads(environ["wsgi.input"].read(length) or b"null")
    except json.JSONDecodeError as exc:
        raise ValueError(f"the body is not JSON: {exc}") from exc
    samples = payload.get("samples") if isinstance(payload, dict) else None
    if not isinstance(samples, list) or not all(type(s) is int for s in samples):
        raise ValueError('send {"samples": [integers]}')
    return samples


def _answer(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
