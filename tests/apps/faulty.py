"""A test app for fault injection: a model that records, waits at a gate, fails on demand.

The model writes what it saw to files under ``CB_RECORD_DIR``, never to
Redis, so a test can observe it while Redis is down or the worker is killed.
Task names are explicit, so a fresh copy of this module loaded against
another Redis (tests.apps.load_app) names the same tasks and queues.

Environment (read by the worker): ``CB_TEST_BROKER`` (required),
``CB_TEST_BACKEND`` (default: db 1 of the broker), ``CB_VISIBILITY_TIMEOUT``
(seconds, default 3600), ``CB_ACCEPT_CONTENT`` (comma list, default json),
``CB_RECORD_DIR``, ``CB_GATE_DIR`` (see :func:`pass_gate`), ``CB_BATCH_SECONDS``
(pause per batch, default 0), ``CB_KEYPREFIX`` (kombu's ``global_keyprefix``, default none),
``CB_WAIT_REPLICAS`` (``batching_wait_replicas``, default 0).
``sentinel://`` URLs name tests.servers' Sentinel master.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from celery import Celery

from celery_batching import batched
from tests.servers import SENTINEL_MASTER

BROKER = os.environ["CB_TEST_BROKER"]
BACKEND = os.environ.get("CB_TEST_BACKEND") or BROKER.rsplit("/", 1)[0] + "/1"
# Broker and backend behind Redis Sentinel (sentinel:// URLs) name the master the sentinels watch.
SENTINEL_OPTIONS = {"master_name": SENTINEL_MASTER} if BROKER.startswith("sentinel://") else {}
# Largest sample the 'work' task accepts, small so a test can exceed it cheaply.
MAX_SAMPLE_BYTES = 1024
# Batches bigger than this make the 'oom' model run out of (pretend) GPU memory.
OOM_ABOVE = 4
# How often a model waiting at the gate looks for a token.
GATE_POLL_SECONDS = 0.01

app = Celery("faulty", broker=BROKER, backend=BACKEND)
app.conf.update(
    broker_transport_options={
        "visibility_timeout": float(os.environ.get("CB_VISIBILITY_TIMEOUT", "3600")),
        **({"global_keyprefix": os.environ["CB_KEYPREFIX"]} if os.environ.get("CB_KEYPREFIX") else {}),
        **SENTINEL_OPTIONS,
    },
    result_backend_transport_options=SENTINEL_OPTIONS,
    batching_wait_replicas=int(os.environ.get("CB_WAIT_REPLICAS", "0")),
    accept_content=os.environ.get("CB_ACCEPT_CONTENT", "json").split(","),
    broker_connection_retry_on_startup=True,
    worker_send_task_events=True,  # the event dispatcher must survive faults too
)


def record(kind: str, batch: list) -> None:
    """Append one line per predict call: which task, which process, which samples."""
    directory = os.environ.get("CB_RECORD_DIR")
    if directory:
        line = json.dumps({"task": kind, "pid": os.getpid(), "batch": batch}) + "\n"
        with open(Path(directory) / "batches.jsonl", "a") as file:
            file.write(line)


def pass_gate() -> None:
    """Wait until the test lets this batch through (only when ``CB_GATE_DIR`` is set).

    A batch passes when the file ``open`` exists, or when it takes one
    ``token-*`` file (renaming it is atomic, so each token frees one batch).
    """
    directory = os.environ.get("CB_GATE_DIR")
    if not directory:
        return
    gate = Path(directory)
    while not (gate / "open").exists():
        for token in sorted(gate.glob("token-*")):
            try:
                token.rename(gate / f"used-{uuid.uuid4().hex}")
                return
            except FileNotFoundError:
                continue  # another batch took it
        time.sleep(GATE_POLL_SECONDS)


@batched(app, name="faulty.work", max_batch_size=8, max_sample_bytes=MAX_SAMPLE_BYTES)
def work(batch: list[int | str]) -> list[int | str]:
    """Doubles samples, after the gate; a negative number crashes the whole batch (a poison sample)."""
    record("work", batch)
    pass_gate()
    time.sleep(float(os.environ.get("CB_BATCH_SECONDS", "0")))
    for sample in batch:
        if isinstance(sample, int) and sample < 0:
            raise ValueError(f"poison sample {sample}")
    return [2 * sample for sample in batch]


@batched(app, name="faulty.oom", max_batch_size=16)
def oom(batch: list[int]) -> list[int]:
    """Runs out of CUDA memory on batches bigger than OOM_ABOVE, as a big model on a small GPU."""
    import torch

    record("oom", batch)
    if len(batch) > OOM_ABOVE:
        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: batch of {len(batch)}")
    return [sample + 1 for sample in batch]


@batched(app, name="faulty.soak", max_batch_size=32)
def soak(batch: list[int]) -> list[int]:
    """Doubles numbers; a negative one crashes its batch. Records each batch as it starts
    ('soak-start') and, once it succeeded, as done ('soak': one record per sample per execution)."""
    record("soak-start", batch)
    time.sleep(float(os.environ.get("CB_BATCH_SECONDS", "0")))
    for sample in batch:
        if sample < 0:
            raise ValueError(f"poison sample {sample}")
    record("soak", batch)
    return [2 * sample for sample in batch]
