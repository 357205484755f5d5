"""The demo's naive endpoint (the benchmark's baseline): off unless INFERENCE_NAIVE=1, then the same numbers.

With the setting on, the web process embeds one text itself; the vector must
match what the batched endpoint gets from a real worker, so the benchmark
compares the same work done two ways.
"""

from __future__ import annotations

import pytest

from tests.demo_site import client, demo_site, embed_worker, post, tiny_checkpoint  # noqa: F401 - fixtures


def test_naive_endpoint_is_off_by_default(client):
    response = post(client, "/api/naive/embed", {"text": "A sentence."})
    assert response.status_code == 404
    assert "set INFERENCE_NAIVE=1" in response.json()["error"]


@pytest.mark.usefixtures("embed_worker")
def test_naive_embedding_equals_the_batched_one(client):
    from django.test import override_settings

    # Given the naive endpoint turned on
    text = "The web process runs this one itself."
    with override_settings(INFERENCE_NAIVE=True):
        # When one text is embedded there and through the worker
        naive = post(client, "/api/naive/embed", {"text": text})
        batched = post(client, "/api/embed", {"text": text})

        # And a list is sent to the naive endpoint
        listed = post(client, "/api/naive/embed", {"texts": ["a", "b"]})

    # Then both vectors are the same 384 floats
    assert naive.status_code == 200, naive.content
    assert batched.status_code == 200, batched.content
    assert naive.json()["dim"] == 384
    assert naive.json()["embedding"] == pytest.approx(batched.json()["embedding"], abs=1e-5)

    # And a list is refused: the naive endpoint is one model call per text
    assert listed.status_code == 400
    assert 'takes one "text"' in listed.json()["error"]
