"""HTTP views: the JSON API (blocking and async flavours), health, and the try-it page.

``/api/*`` block a server thread while they wait (gunicorn, WSGI);
``/api/async/*`` are the same endpoints awaiting on the event loop
(uvicorn, ASGI); ``/api/naive/embed``, off by default, runs the model in
the web process (see :mod:`.naive`). All answer errors as ``{"error": message}``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from celery_batching import InvalidSample

from . import naive, tasks
from .jobs import embed_job, fill_mask_job, limits, similarity_job
from .service import ApiError, Job, directory, run, run_async
from .validation import BadRequest, parse_json, read_texts

Prepare = Callable[[dict[str, Any]], Job]
View = Callable[[HttpRequest], JsonResponse]
AsyncView = Callable[[HttpRequest], Awaitable[JsonResponse]]


def error(status: int, message: str, **extra: Any) -> JsonResponse:
    """The API's error answer; a 503 says when to try again (``DEMO_RETRY_AFTER`` seconds)."""
    response = JsonResponse({"error": message, **extra}, status=status)
    if status == 405:
        response["Allow"] = "POST"
    if status == 503:
        response["Retry-After"] = str(settings.DEMO_RETRY_AFTER)
    return response


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    """Django's 404 handler: JSON, like every other answer of the API."""
    return error(404, f"no such endpoint: {request.path}; the API is under /api/ (see /)")


def bad_request(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    """Django's 400 handler (a request Django refused before any view, e.g. an unknown Host)."""
    return error(400, "bad request: the server refused it before reading it (check the Host header)")


def forbidden(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return error(403, "forbidden")


def server_error(request: HttpRequest) -> JsonResponse:
    """Django's 500 handler: a bug, answered as JSON (the traceback is in the server's log)."""
    return error(500, "internal server error; the server's log has the details")


def _payload(request: HttpRequest) -> dict[str, Any]:
    """The request's JSON object, or BadRequest/ApiError."""
    if request.method != "POST":
        raise ApiError(405, f"{request.path} takes POST with a JSON body, not {request.method}")
    try:
        body = request.body
    except RequestDataTooBig:
        raise BadRequest("the request body is too large") from None
    return parse_json(body)


def _job(request: HttpRequest, prepare: Prepare) -> Job:
    """The request's job, or BadRequest/ApiError before anything is sent."""
    return prepare(_payload(request))


def endpoint(prepare: Prepare) -> View:
    """A blocking JSON view running the job ``prepare`` builds."""

    def view(request: HttpRequest) -> JsonResponse:
        try:
            return JsonResponse(run(_job(request, prepare)))
        except BadRequest as exc:
            return error(400, str(exc))
        except ApiError as exc:
            return error(exc.status, exc.message, **exc.extra)

    return view


def async_endpoint(prepare: Prepare) -> AsyncView:
    """The same endpoint awaiting its results; holds no thread while it waits."""

    async def view(request: HttpRequest) -> JsonResponse:
        try:
            return JsonResponse(await run_async(_job(request, prepare)))
        except BadRequest as exc:
            return error(400, str(exc))
        except ApiError as exc:
            return error(exc.status, exc.message, **exc.extra)

    return view


embed = endpoint(embed_job)
similarity = endpoint(similarity_job)
fill_mask = endpoint(fill_mask_job)
embed_async = async_endpoint(embed_job)
similarity_async = async_endpoint(similarity_job)
fill_mask_async = async_endpoint(fill_mask_job)


def naive_embed(request: HttpRequest) -> JsonResponse:
    """One text embedded by this web process itself (``INFERENCE_NAIVE=1`` only): the benchmark's baseline."""
    if not settings.INFERENCE_NAIVE:
        return error(404, "the naive endpoint is off; set INFERENCE_NAIVE=1 to have the web process run the model")
    started = time.perf_counter()
    try:
        texts, single = read_texts(_payload(request), limits())
        if not single:
            raise BadRequest('the naive endpoint takes one "text", one model call per request')
        vector = naive.embed_here(texts[0])
    except (BadRequest, InvalidSample) as exc:
        return error(400, str(exc))
    except ApiError as exc:
        return error(exc.status, exc.message, **exc.extra)
    return JsonResponse(
        {"embedding": vector, "dim": len(vector), "elapsed_ms": round((time.perf_counter() - started) * 1000, 1)}
    )


def healthz(request: HttpRequest) -> JsonResponse:
    """Redis reachability and the live workers of each batched queue; 503 when Redis is down."""
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        client.ping()
        redis_state = "ok"
    except redis.RedisError as exc:
        redis_state = f"unreachable: {exc}"
    finally:
        client.close()
    live = directory().workers()
    body = {
        "redis": redis_state,
        "queues": {task.batch_queue: live.get(task.batch_queue, []) for task in (tasks.embed, tasks.fill_mask)},
        "fill_mask_configured": bool(settings.FILL_MASK_CHECKPOINT),
    }
    if directory().last_error:
        body["workers_error"] = directory().last_error
    return JsonResponse(body, status=200 if redis_state == "ok" else 503)


def index(request: HttpRequest) -> HttpResponse:
    """The page to try the API in a browser."""
    return render(
        request,
        "inference/index.html",
        {
            "fill_mask_configured": bool(settings.FILL_MASK_CHECKPOINT),
            "limits": limits(),
        },
    )
