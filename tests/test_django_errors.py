"""Every answer of the demo's API is JSON, errors included; overload answers 503 with Retry-After; logs are UTC.

Django's own error pages (404, 400 for a bad Host, 500 for a bug) are the
API's ``{"error": ...}``; a queue at its bound refuses a request at once with
503 and ``Retry-After``, sending nothing.
"""

from __future__ import annotations

import logging
import signal

import pytest

from tests.demo_site import client, demo_site, embed_worker, post, tiny_checkpoint  # noqa: F401 - fixtures


def test_an_unknown_path_is_a_json_404(client):
    response = client.get("/api/no-such-thing")
    assert response.status_code == 404
    assert response.json() == {"error": "no such endpoint: /api/no-such-thing; the API is under /api/ (see /)"}


def test_a_request_for_an_unknown_host_is_a_json_400(client):
    response = client.post("/api/embed", data="{}", content_type="application/json", HTTP_HOST="evil.example")
    assert response.status_code == 400
    assert "bad request" in response.json()["error"]


def test_a_bug_in_a_view_is_a_json_500(demo_site, monkeypatch):
    from django.test import Client

    from django_demo.inference import views

    # Given a view that hits a bug (a fault put in for the test)
    def broken(job):
        raise RuntimeError("a bug")

    monkeypatch.setattr(views, "run", broken)

    # When it is called, then the answer is the API's JSON error, not Django's HTML page
    response = Client(raise_request_exception=False).post(
        "/api/embed", data='{"text": "hi"}', content_type="application/json"
    )
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"error": "internal server error; the server's log has the details"}


@pytest.mark.usefixtures("embed_worker")
def test_a_full_queue_is_a_503_with_retry_after_and_sends_nothing(client, embed_worker, redis_server, monkeypatch):
    from django_demo.inference import tasks
    from django_demo.inference.service import directory

    # Given the site has seen the worker, which then freezes, and the embed queue at a bound of 2
    assert post(client, "/api/embed", {"text": "warm"}).status_code == 200
    monkeypatch.setattr(directory(), "grace", 3600.0)  # the site keeps believing it is alive
    monkeypatch.setattr(tasks.embed, "max_queue_depth", 2)
    broker = redis_server.client(0)
    embed_worker.signal(signal.SIGSTOP)
    try:
        broker.lpush("embed", b"one waiting", b"another")

        # When a request comes
        response = post(client, "/api/embed", {"texts": ["a", "b"]})

        # Then it is refused at once: 503, Retry-After, a message naming the queue; nothing was queued
        assert response.status_code == 503
        assert response["Retry-After"] == "1"
        assert response.json()["queue"] == "embed"
        assert "too busy: queue 'embed' holds 2 waiting message(s); 2 more would pass" in response.json()["error"]
        assert broker.llen("embed") == 2
    finally:
        broker.delete("embed")
        embed_worker.signal(signal.SIGCONT)


def test_the_server_clock_zone_and_its_log_lines_are_utc(demo_site):
    from django.conf import settings

    from django_demo.log_format import UTCFormatter

    # Given the site's settings and its configured log handler
    assert settings.TIME_ZONE == "UTC"
    formatters = [handler.formatter for handler in logging.getLogger().handlers]
    assert any(isinstance(formatter, UTCFormatter) for formatter in formatters)

    # When a record made at the epoch is formatted, then its time stamp is UTC
    record = logging.LogRecord("demo", logging.INFO, __file__, 1, "hello", None, None)
    record.created, record.msecs = 0.0, 0.0
    assert UTCFormatter().format(record) == "1970-01-01T00:00:00.000Z INFO demo: hello"
