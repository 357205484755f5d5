"""The demo's JSON API through the real stack: Django views, Redis, a real embed worker.

Bad input is answered 400 before anything is sent; a model's own rejection
comes back as 400 with its message; a wait that runs out answers 504 and
revokes the tasks; the async (ASGI) endpoints answer the same.
"""

from __future__ import annotations

import asyncio
import json
import signal

import pytest

from tests.demo_site import client, demo_site, embed_worker, post, tiny_checkpoint  # noqa: F401 - fixtures
from tests.servers import wait_until

pytestmark = pytest.mark.usefixtures("embed_worker")


LONG = "word " * 250  # 1250 characters: over the default limit of 1000
DEEP = "[" * 1000 + "]" * 1000  # JSON nested 1,000 deep in 2 KB

BAD_INPUTS = [
    ("/api/embed", None, "{not json", "the request body is not valid JSON"),
    ("/api/embed", None, "[1, 2]", "the request body must be a JSON object, got a list"),
    ("/api/embed", {}, None, 'missing field: send "text" (one string) or "texts" (a list of strings)'),
    ("/api/embed", {"text": "a", "texts": ["b"]}, None, 'send either "text" (one string) or "texts"'),
    ("/api/embed", {"text": 5}, None, '"text" must be a string, got a number'),
    ("/api/embed", {"texts": "abc"}, None, '"texts" must be a list of strings, got a string'),
    ("/api/embed", {"texts": ["ok", None]}, None, '"texts"[1] must be a string, got null'),
    ("/api/embed", {"text": "   "}, None, '"text" is empty; send at least one word'),
    ("/api/embed", {"texts": []}, None, '"texts" is empty; send at least one text'),
    ("/api/embed", {"text": LONG}, None, '"text" has 1250 characters, more than the limit of 1000'),
    ("/api/embed", {"texts": ["x"] * 33}, None, '"texts" has 33 texts, more than the limit of 32 per request'),
    ("/api/similarity", {"texts": ["a"]}, None, 'missing field "query"'),
    ("/api/similarity", {"query": "a"}, None, 'missing field "texts"'),
    ("/api/similarity", {"query": "a", "texts": [""]}, None, '"texts"[0] is empty'),
    ("/api/fill-mask", {"text": "no mask here"}, None, '"text" has no [MASK]; put [MASK] where the missing word goes'),
    ("/api/fill-mask", {"texts": ["a [MASK]", "none"]}, None, '"texts"[1] has no [MASK]'),
    ("/api/embed", None, DEEP, "the request body nests too deep to read"),
    ("/api/embed", None, '{"text": ' + DEEP + "}", "the request body nests too deep to read"),
    ("/api/embed", None, '{"text": "a\\ud800b"}', "\"text\" is not valid Unicode: '\\ud800' at index 1 is half"),
    ("/api/embed", None, '{"texts": ["ok", "\\udfff"]}', '"texts"[1] is not valid Unicode'),
    ("/api/embed", None, b'{"text": "a\xed\xa0\x80b"}', '"text" is not valid Unicode'),  # a surrogate in UTF-8
    ("/api/embed", None, b'{"text": "\xff"}', "the request body is not valid JSON"),  # not UTF-8
    ("/api/embed", None, '{"text": ' + "1" * 5000 + "}", "the request body is not valid JSON"),  # too long an int
    ("/api/embed", None, '{"text": NaN}', '"text" must be a string, got a number'),
]


@pytest.mark.parametrize(("path", "payload", "raw", "message"), BAD_INPUTS)
@pytest.mark.parametrize("flavour", ["", "/async"])
def test_bad_input_is_400_with_a_message_and_sends_nothing(client, redis_server, path, payload, raw, message, flavour):
    # Given a live worker and the queues' lengths before
    broker = redis_server.client(0)
    before = broker.llen("embed") + broker.llen("fill_mask")

    # When bad input is posted
    response = post(client, path.replace("/api", "/api" + flavour), payload, raw)

    # Then it is a 400 with a message saying what to send, and no task was queued
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert broker.llen("embed") + broker.llen("fill_mask") == before


def test_get_on_an_api_endpoint_is_405(client):
    response = client.get("/api/embed")
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert "takes POST with a JSON body" in response.json()["error"]


def test_embed_one_text_and_a_list(client):
    # When one text, then a list, are embedded
    one = post(client, "/api/embed", {"text": "A sentence to embed."})
    many = post(client, "/api/embed", {"texts": ["first", "second", "third"]})

    # Then the answers hold 384-float vectors, one per text
    assert one.status_code == 200, one.content
    assert one.json()["dim"] == 384 and len(one.json()["embedding"]) == 384
    assert many.status_code == 200, many.content
    assert [len(v) for v in many.json()["embeddings"]] == [384, 384, 384]


def test_similarity_ranks_the_related_sentence_first(client):
    response = post(
        client,
        "/api/similarity",
        {
            "query": "How do I bake bread?",
            "texts": ["The stock market fell today.", "A recipe for homemade bread."],
        },
    )
    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert results[0]["text"] == "A recipe for homemade bread."
    assert results[0]["score"] > results[1]["score"]


def test_a_sample_the_model_rejects_is_400_with_the_models_message(client):
    # Given the site allows longer texts than the model does (max_chars=2000)
    from django.test import override_settings

    with override_settings(DEMO_MAX_TEXT_CHARS=5000):
        # When a 2500-character text reaches the worker
        response = post(client, "/api/embed", {"texts": ["fine", "x" * 2500]})

    # Then the task's InvalidSample comes back as a 400 with its message
    assert response.status_code == 400
    assert "MiniLMEmbedder got a text of 2500 characters, more than max_chars=2000" in response.json()["error"]


def test_timeout_is_504_and_the_tasks_are_revoked(client, embed_worker, monkeypatch):
    from django.test import override_settings

    from django_demo.celery import app
    from django_demo.inference.service import directory

    # Given a worker that the site has seen alive, then frozen (SIGSTOP) so it answers nothing
    assert post(client, "/api/embed", {"text": "warm"}).status_code == 200
    monkeypatch.setattr(directory(), "grace", 3600.0)  # the site keeps believing it is alive
    embed_worker.signal(signal.SIGSTOP)
    try:
        # When a request waits longer than the result timeout
        with override_settings(DEMO_RESULT_TIMEOUT=1.0):
            response = post(client, "/api/embed", {"text": "never answered in time"})
    finally:
        embed_worker.signal(signal.SIGCONT)

    # Then it is a 504 naming the task ids ...
    assert response.status_code == 504
    body = response.json()
    assert "did not answer within 1.0s; the request's tasks were revoked" in body["error"]
    (task_id,) = body["task_ids"]

    # ... the resumed worker has the revoke, and the task is REVOKED, never run
    def worker_has_revoke():
        replies = app.control.inspect(timeout=1.0, destination=[embed_worker.name]).revoked() or {}
        return task_id in replies.get(embed_worker.name, [])

    wait_until(worker_has_revoke, 30, "the worker to list the revoked task")
    wait_until(lambda: app.AsyncResult(task_id).state == "REVOKED", 30, "the task to be marked REVOKED")


def test_healthz_reports_redis_and_the_workers_per_queue(client, embed_worker):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["redis"] == "ok"
    assert body["queues"]["embed"] == [embed_worker.name]
    assert body["fill_mask_configured"] is True


def test_healthz_is_503_when_redis_is_unreachable(client):
    from django.test import override_settings

    from tests.servers import free_port

    with override_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"):
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["redis"].startswith("unreachable")


def test_the_page_leads_with_similarity(client):
    response = client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.index('id="similarity"') < html.index('id="fill-mask"')


# -- the ASGI flavour ------------------------------------------------------


@pytest.fixture
def async_client(demo_site):
    from django.test import AsyncClient

    return AsyncClient()


def apost(async_client, path: str, payload):
    return async_client.post(path, data=json.dumps(payload), content_type="application/json")


def test_async_endpoints_answer_many_requests_at_once(async_client):
    # When 20 embed requests and a similarity request are awaited concurrently on one event loop
    async def scenario():
        embeds = [apost(async_client, "/api/async/embed", {"text": f"sentence number {i}"}) for i in range(20)]
        similar = apost(async_client, "/api/async/similarity", {"query": "bread", "texts": ["baking", "stocks"]})
        return await asyncio.gather(*embeds, similar)

    responses = asyncio.run(scenario())

    # Then every one is answered with its own result
    assert [r.status_code for r in responses] == [200] * 21
    assert all(len(r.json()["embedding"]) == 384 for r in responses[:20])
    assert [item["text"] for item in responses[20].json()["results"]] == ["baking", "stocks"]


def test_async_model_rejection_is_400(async_client):
    from django.test import override_settings

    with override_settings(DEMO_MAX_TEXT_CHARS=5000):
        response = asyncio.run(apost(async_client, "/api/async/embed", {"text": "y" * 2100}))
    assert response.status_code == 400
    assert "more than max_chars=2000" in response.json()["error"]


def test_async_timeout_is_504(async_client, embed_worker, monkeypatch):
    from django.test import override_settings

    from django_demo.celery import app
    from django_demo.inference.service import directory

    monkeypatch.setattr(directory(), "grace", 3600.0)
    embed_worker.signal(signal.SIGSTOP)
    try:
        with override_settings(DEMO_RESULT_TIMEOUT=1.0):
            response = asyncio.run(apost(async_client, "/api/async/embed", {"text": "late"}))
    finally:
        embed_worker.signal(signal.SIGCONT)
    assert response.status_code == 504
    (task_id,) = response.json()["task_ids"]
    wait_until(lambda: app.AsyncResult(task_id).state == "REVOKED", 30, "the task to be marked REVOKED")
