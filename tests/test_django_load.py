"""The demo under real traffic: gunicorn as deployed, many requests at once, a live worker.

Every request must get its answer: none may fail for want of a broker
connection (kombu's pool of 10 is smaller than gunicorn's 16 threads), not
even while Redis stalls and every thread's push waits on it at once.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.demo_site import WebServer, demo_site, embed_worker, site_env, tiny_checkpoint  # noqa: F401 - fixtures

# As many requests in flight as the load, against more threads than kombu's 10 connections.
CONCURRENT = 200
THREADS = 16


@pytest.fixture(scope="module")
def site(redis_server, tiny_checkpoint, embed_worker, tmp_path_factory) -> Iterator[WebServer]:
    log = str(tmp_path_factory.mktemp("web") / "gunicorn.log")
    server = WebServer(site_env(redis_server, tiny_checkpoint), log, threads=THREADS).start()
    yield server
    server.stop()


def post_embed(url: str, text: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/api/embed", data=json.dumps({"text": text}).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
@pytest.mark.parametrize("redis_stalls", [False, True], ids=["steady", "redis-stalls"])
def test_200_concurrent_requests_all_get_their_answer(site, embed_worker, redis_server, redis_stalls):
    # Given the site under gunicorn with 16 threads, and a live embed worker the site has seen
    assert post_embed(site.url, "warm up")[0] == 200
    if redis_stalls:
        # ... and Redis holding every write for a second, so all of the site's pushes wait at once
        redis_server.client(0).execute_command("CLIENT", "PAUSE", "1000", "WRITE")

    # When 200 requests are posted at once
    with ThreadPoolExecutor(CONCURRENT) as pool:
        answers = list(pool.map(lambda i: post_embed(site.url, f"sentence number {i}"), range(CONCURRENT)))

    # Then every one is a 200 with its vector: no 503 for a broker connection
    statuses = Counter(status for status, _ in answers)
    errors = Counter(body.get("error") for status, body in answers if status != 200)
    assert statuses == {200: CONCURRENT}, errors
    assert all(body["dim"] == 384 for _, body in answers)
