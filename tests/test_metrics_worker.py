"""A real worker's Prometheus endpoint counts what it served.

The demo's embed worker is started with ``CELERY_BATCHING_METRICS_PORT``;
after a known number of samples (one of them rejected) its ``/metrics``
must show them in the batch-size histogram, the outcome counters and the
failure counter, and every sample's wait in the queue.
"""

from __future__ import annotations

import pytest

from celery_batching import InvalidSample, gather, submit_many
from tests.demo_site import demo_site, site_env, tiny_checkpoint  # noqa: F401 - fixtures
from tests.scrape import scrape, value
from tests.servers import Worker, free_port, wait_until


def test_worker_metrics_count_every_sample(redis_server, tiny_checkpoint, demo_site):  # noqa: F811
    from django_demo.inference.tasks import embed

    # Given an embed worker exporting metrics on a free loopback port
    port = free_port()
    env = {
        **site_env(redis_server, tiny_checkpoint),
        "CELERY_BATCHING_METRICS_PORT": str(port),
        "CELERY_BATCHING_METRICS_ADDR": "127.0.0.1",
    }
    worker = Worker("django_demo", redis_server.url(0), "-Q", "embed", env=env).start(120)
    try:
        # When 12 good samples and one the model rejects are served
        assert len(gather(submit_many(embed, [f"sentence {i}" for i in range(12)]), timeout=60)) == 12
        with pytest.raises(InvalidSample):
            gather(submit_many(embed, ["z" * 3000]), timeout=60)

        # Then the scrape counts them (the hooks run just after the results are stored)
        def counted():
            samples = scrape(port)
            done = value(samples, "celery_batching_samples_total", task="embed", outcome="succeeded") == 12
            return (
                samples
                if done and value(samples, "celery_batching_samples_total", task="embed", outcome="failed") == 1
                else None
            )

        samples = wait_until(counted, 30, f"the metrics to count 13 samples; worker log: {worker.log_path}")
        assert value(samples, "celery_batching_batch_size_sum", task="embed") == 12
        assert 1 <= value(samples, "celery_batching_batch_size_count", task="embed") <= 12
        assert value(samples, "celery_batching_predict_seconds_count", task="embed") == value(
            samples, "celery_batching_batch_size_count", task="embed"
        )
        assert value(samples, "celery_batching_failures_total", task="embed", exception="InvalidSample") == 1
        assert value(samples, "celery_batching_predict_samples_per_second", task="embed") > 0
        # Every message carried its send time, so every claimed sample has a queue wait
        assert value(samples, "celery_batching_queue_wait_seconds_count", task="embed") == 13
    finally:
        worker.stop()
