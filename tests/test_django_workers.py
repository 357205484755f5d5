"""Live-worker checks of the demo: 503 at once without a worker, fill-mask end to end, a stopped worker.

A queue with no live worker is answered 503 before a task is sent; the
site notices a stopped worker within its grace period.
"""

from __future__ import annotations

from tests.demo_site import client, demo_site, post, start_demo_worker, tiny_checkpoint  # noqa: F401 - fixtures
from tests.servers import wait_until


def test_fill_mask_without_a_checkpoint_says_how_to_set_it(client):
    from django.test import override_settings

    with override_settings(FILL_MASK_CHECKPOINT=""):
        response = post(client, "/api/fill-mask", {"text": "Paris is the [MASK] of France."})
    assert response.status_code == 503
    error = response.json()["error"]
    assert "fill-mask is not configured: set FILL_MASK_CHECKPOINT" in error
    assert "-Q fill_mask" in error


def test_no_worker_for_the_queue_is_503_and_nothing_is_sent(client, redis_server):
    # Given no worker serves fill_mask (and the site has polled the workers once)
    from django_demo.inference.service import directory

    directory().workers()
    before = redis_server.client(0).llen("fill_mask")

    # When a valid request comes
    response = post(client, "/api/fill-mask", {"text": "I [MASK] you."})

    # Then it is a 503 naming the queue and the command to start a worker, and the queue is untouched
    assert response.status_code == 503, response.content
    assert "no live worker serves the 'fill_mask' queue" in response.json()["error"]
    assert "celery -A django_demo worker" in response.json()["error"]
    assert redis_server.client(0).llen("fill_mask") == before


def test_fill_mask_runs_on_a_worker_and_a_stopped_worker_gives_503(client, redis_server, tiny_checkpoint):
    from celery import Celery

    from celery_batching.client.directory import WorkerDirectory, serving_workers
    from django_demo.inference.service import directory

    # Given a worker serving fill_mask with the tiny checkpoint, seen by the site
    worker = start_demo_worker(redis_server, tiny_checkpoint, "fill_mask")
    try:
        # (a separate app: broadcasts of one app in one process share a reply queue, and the site's poller runs)
        probe = Celery("probe", broker=redis_server.url(0), set_as_current=False)
        # (a loaded machine may answer a broadcast late: ask again until the deadline)
        wait_until(
            lambda: serving_workers(probe, timeout=1.0) == {"fill_mask": [worker.name]},
            30,
            "the worker to answer batched_queues",
        )
        fresh = WorkerDirectory(probe, interval=60.0, reply_timeout=1.0, grace=60.0)
        assert fresh.workers() == {"fill_mask": [worker.name]}  # the first call waits for the first answers
        wait_until(lambda: directory().workers().get("fill_mask"), 10, "the site to see the fill_mask worker")

        # When one text and a list are sent
        one = post(client, "/api/fill-mask", {"text": "Paris is the [MASK] of France."})
        many = post(client, "/api/fill-mask", {"texts": ["a [MASK] b", "[MASK] and [MASK]"]})

        # Then each [MASK] gets its top 5 candidates
        assert one.status_code == 200, one.content
        (candidates,) = one.json()["masks"]
        assert len(candidates) == 5 and set(candidates[0]) == {"token", "score"}
        assert many.status_code == 200, many.content
        assert [len(r["masks"]) for r in many.json()["results"]] == [1, 2]
    finally:
        # When the worker stops
        worker.stop()

    # Then, once its grace period has passed, the site no longer counts it, and answers 503
    wait_until(lambda: not directory().workers().get("fill_mask"), 30, "the site to notice the stopped worker")
    response = post(client, "/api/fill-mask", {"text": "a [MASK]"})
    assert response.status_code == 503
    assert "no live worker serves the 'fill_mask' queue" in response.json()["error"]
