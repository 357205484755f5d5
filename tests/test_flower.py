"""Unmodified Flower shows every batched task with its state, runtime and worker.

A real worker with task events on (``-E``) serves the demo's embed queue;
``celery -A django_demo flower`` runs as a subprocess on a free port; tasks
sent one by one and many at once must all show up in Flower's ``/api/tasks``.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_batching import InvalidSample, gather, submit_many
from tests.demo_site import demo_site, site_env, start_demo_worker, tiny_checkpoint  # noqa: F401 - fixtures
from tests.servers import ROOT, free_port, stop_process, wait_until

# Flower's API answers only with authentication (or FLOWER_UNAUTHENTICATED_API).
USER, PASSWORD = "tester", "flower-test-password"


class Flower:
    """A ``celery -A django_demo flower`` subprocess on a free loopback port."""

    def __init__(self, env: dict[str, str], log_path: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "django_demo",
            "flower",
            "--address=127.0.0.1",
            f"--port={self.port}",
            f"--basic-auth={USER}:{PASSWORD}",
        ]
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}
            )

    def get(self, path: str) -> str:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.read().decode()

    def answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"flower exited with {self.process.returncode}: {Path(self.log_path).read_text()}")
        try:
            return self.get("/healthcheck") == "OK"
        except (urllib.error.URLError, ConnectionError):
            return False

    def stop(self) -> None:
        stop_process(self.process, 15)


@pytest.fixture
def flower(redis_server, tiny_checkpoint, demo_site, tmp_path) -> Iterator[Flower]:  # noqa: F811
    process = Flower(site_env(redis_server, tiny_checkpoint), str(tmp_path / "flower.log"))
    try:
        wait_until(process.answers, 60, "flower to answer /healthcheck")
        yield process
    finally:
        process.stop()


def test_flower_lists_every_batched_task(redis_server, tiny_checkpoint, flower):  # noqa: F811
    from django_demo.inference.tasks import embed

    # Given a worker with task events on, and Flower receiving its events (its heartbeat counts it online)
    worker = start_demo_worker(redis_server, tiny_checkpoint, "embed", events=True)
    try:
        online = f'flower_worker_online{{worker="{worker.name}"}} 1.0'
        wait_until(lambda: online in flower.get("/metrics"), 30, "flower to see the worker's heartbeat")

        # When tasks are sent many at once, one by one, and one of them is rejected by the model
        many = submit_many(embed, [f"sentence {i}" for i in range(6)])
        single = embed.delay("one more sentence")
        gather([*many, single], timeout=60)
        rejected = embed.delay("r" * 3000)
        with pytest.raises(InvalidSample):
            rejected.get(timeout=60)
        expected = {r.id: "SUCCESS" for r in [*many, single]} | {rejected.id: "FAILURE"}

        # Then Flower lists each with its final state, its runtime and the worker that ran it
        def listed():
            tasks = json.loads(flower.get("/api/tasks"))
            done = all(tasks.get(task_id, {}).get("state") == state for task_id, state in expected.items())
            return tasks if done else None

        try:
            tasks = wait_until(listed, 30, "flower to list every task in its final state")
        except TimeoutError as exc:
            listed_now = json.loads(flower.get("/api/tasks"))
            received = {task_id: listed_now.get(task_id, {}).get("state", "absent") for task_id in expected}
            events = [line for line in flower.get("/metrics").splitlines() if line.startswith("flower_events_total")]
            raise AssertionError(
                f"{exc}\nflower /api/tasks states: {received}\nflower events: {events}\n"
                f"worker log (end): {worker.log()[-3000:]}"
            ) from None
        for task_id, state in expected.items():
            task = tasks[task_id]
            assert (task["name"], task["worker"]) == ("embed", worker.name)
            assert task["received"] is not None
            if state == "SUCCESS":  # Celery's task-failed event carries no runtime, so Flower shows none
                assert task["started"] is not None
                assert task["runtime"] is not None and task["runtime"] >= 0
        assert "InvalidSample" in tasks[rejected.id]["exception"]
    finally:
        worker.stop()
