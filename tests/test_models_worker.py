"""The bundled models served by a real worker: per-task shapes, and batching changes nothing."""

from __future__ import annotations

import importlib
import math

import pytest

from celery_batching import InvalidSample, gather, submit_many
from celery_batching.models.embeddings import MiniLMEmbedder
from celery_batching.models.tiny_bert import build_tiny_bert

SENTENCES = [
    "A cat sits on the mat.",
    "Batching makes models fast.",
    "The quick brown fox jumps over the lazy dog, again and again, all afternoon long.",
    "Hello",
] * 5


@pytest.fixture
def models_app(app_module_env, tmp_path, monkeypatch):
    checkpoint = build_tiny_bert(tmp_path / "tiny-bert")
    monkeypatch.setenv("CB_TINY_BERT", str(checkpoint))
    yield importlib.import_module("tests.apps.models_app"), str(checkpoint)


def test_embeddings_through_the_worker_equal_direct_ones_whatever_the_batch(models_app, start_worker):
    module, checkpoint = models_app
    # Given the queue filled first (so samples ride in full, mixed batches) ...
    queued = submit_many(module.embed, SENTENCES)
    start_worker("tests.apps.models_app", env={"CB_TINY_BERT": checkpoint}, timeout=120)
    batched = gather(queued, timeout=120)
    # ... and then one lone request (a batch of one)
    lone = module.embed.delay(SENTENCES[2]).get(timeout=60)
    # Then each equals the embedding computed directly, one sentence at a time
    direct = MiniLMEmbedder()
    direct.init_model()
    for sentence, vector in zip(SENTENCES, batched):
        assert len(vector) == 384 and all(isinstance(x, float) for x in vector)
        assert math.isclose(sum(x * x for x in vector), 1.0, rel_tol=1e-4)
        expected = direct.predict([sentence])[0]
        assert max(abs(a - b) for a, b in zip(vector, expected)) < 1e-4
    assert max(abs(a - b) for a, b in zip(lone, direct.predict([SENTENCES[2]])[0])) < 1e-4


def test_fill_mask_and_bad_inputs_per_task(models_app, start_worker):
    module, checkpoint = models_app
    start_worker("tests.apps.models_app", env={"CB_TINY_BERT": checkpoint}, timeout=120)
    good = submit_many(module.fill_mask, ["paris is the [MASK] of france.", "[MASK] and [MASK]."])
    empty, no_mask = module.fill_mask.delay(""), module.fill_mask.delay("no mask here")
    one, two = gather(good, timeout=60)
    assert len(one) == 1 and len(two) == 2
    for guesses in one + two:
        assert len(guesses) == 3
        assert all(isinstance(g["token"], str) and 0.0 <= g["score"] <= 1.0 for g in guesses)
    for bad in (empty, no_mask):
        with pytest.raises(InvalidSample):
            bad.get(timeout=30)
