"""The systems compared, as the harness sees them: which venv, which workers, how many clients.

Client-side code for each system is in :mod:`benchmarks.adapters`; this
module only knows how to start their server side.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The interpreters: the project's (the one running the harness), and the
# anchors' venv made by benchmarks/setup_anchors.sh ($BENCH_ANCHORS_PYTHON overrides it).
PYTHONS = {
    "main": Path(sys.executable),
    "anchors": Path(os.environ.get("BENCH_ANCHORS_PYTHON", REPO / ".venv-anchors" / "bin" / "python")),
}
# Celery worker options every Celery-based system gets: one process per model
# (as a GPU worker runs), no cluster chatter, no per-task log lines.
CELERY_WORKER_OPTIONS = (
    "--pool",
    "solo",
    "--without-gossip",
    "--without-mingle",
    "--without-heartbeat",
    "--loglevel",
    "WARNING",
)


@dataclass(frozen=True)
class System:
    """One row family of the table.

    ``celery_app``: workers are ``celery -A <celery_app> worker``, one process
    each. ``worker_module``: one ``python -m <worker_module> --workers N``
    process starts them all. Neither: the model lives in the client process
    (and its children), so there is one client and no separate worker.
    """

    name: str
    label: str
    venv: str
    celery_app: str | None = None
    worker_module: str | None = None
    scalable: bool = False  # takes a worker count
    uses_redis: bool = False

    @property
    def external_workers(self) -> bool:
        return self.celery_app is not None or self.worker_module is not None

    def python(self) -> Path:
        return PYTHONS[self.venv]

    def available(self) -> bool:
        return self.python().exists()

    def node_names(self, workers: int) -> list[str]:
        """Celery node names of the workers (for readiness pings)."""
        return [f"bench{i}@bench" for i in range(workers)] if self.celery_app else []

    def worker_commands(self, workers: int) -> list[list[str]]:
        """One argv per process the harness starts for ``workers`` workers."""
        python = str(self.python())
        if self.celery_app:
            return [
                [python, "-m", "celery", "-A", self.celery_app, "worker", "-n", node, *CELERY_WORKER_OPTIONS]
                for node in self.node_names(workers)
            ]
        if self.worker_module:
            return [[python, "-m", self.worker_module, "--workers", str(workers)]]
        return []


SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        System("direct", "direct: predict on full batches, in-process", "main"),
        System("naive", "naive: predict([x]) per request, in-process", "main"),
        System("threaded", "service-streamer ThreadedStreamer", "anchors"),
        System("streamer", "service-streamer Streamer", "anchors", scalable=True),
        System(
            "redis_streamer",
            "service-streamer RedisStreamer",
            "anchors",
            worker_module="benchmarks.anchors.redis_streamer_worker",
            scalable=True,
            uses_redis=True,
        ),
        System(
            "celery",
            "plain Celery, one task per sample",
            "main",
            celery_app="benchmarks.apps.celery_plain",
            scalable=True,
            uses_redis=True,
        ),
        System(
            "celery_batches",
            "celery-batches",
            "anchors",
            celery_app="benchmarks.anchors.celery_batches_app",
            scalable=True,
            uses_redis=True,
        ),
        System("ours_local", "celery-batching LocalStreamer, in-process", "main"),
        System(
            "ours",
            "celery-batching batched task",
            "main",
            celery_app="benchmarks.apps.ours",
            scalable=True,
            uses_redis=True,
        ),
        System(
            "ours_kombu_json",
            "celery-batching batched task, kombu's JSON (batching_fast_json=False)",
            "main",
            celery_app="benchmarks.apps.ours_kombu_json",
            scalable=True,
            uses_redis=True,
        ),
        System(
            "ours_single_replies",
            "celery-batching batched task, one reply message per task (batching_batch_replies=False)",
            "main",
            celery_app="benchmarks.apps.ours_single_replies",
            scalable=True,
            uses_redis=True,
        ),
        System(
            "ours_celery_client",
            "celery-batching batched task, Celery's client path (batching_fast_client=False)",
            "main",
            celery_app="benchmarks.apps.ours_celery_client",
            scalable=True,
            uses_redis=True,
        ),
    )
}
