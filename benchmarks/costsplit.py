"""Where one sample's time goes, in µs per sample: ``python -m benchmarks.costsplit [--batches 50]``.

The end-to-end benchmark gives CPU per process; this splits it by stage, in one
process against a private redis-server, using the library's own pieces on the
path a batched task takes: client send (``delay``: envelope and push), worker
claim (the claim script and the acknowledgement), worker decode of the claimed
payloads, result encode, result write (the batch's round trip), client receive
(the reply listener's decode), and redis-server's own CPU over the whole.
Each stage is timed alone, so nothing here touches the hot path of a real
worker. Run for noop (echo) and gpufast (384 floats per sample), side by side:
kombu's JSON with one reply message per task; orjson with one reply message
per batch, written by the store script; and the same written with plain
commands (the path a batch in time takes).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Stages reported, in the order a sample meets them.
STAGES = ("client send", "worker claim", "worker decode", "result encode", "result write", "client receive", "redis")
# Part of the redis stage: redis-server's CPU while the results were written (read from INFO around each write).
WRITE_IN_REDIS = "redis, of it the write"
BATCH = 64
# (label, orjson and one reply per batch, written by the store script), in the order of the levers.
CONFIGURATIONS = (
    ("kombu JSON, one reply per task", False, False),
    ("orjson, one reply per batch, store script", True, True),
    ("orjson, one reply per batch, plain commands", True, False),
)


def _redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _echo(batch: list[Any]) -> list[Any]:
    """The task's predict; never called here (no worker runs), only its name and queue matter."""
    return batch


def _measure(url: str, model: str, fast: bool, batches: int, scripted: bool = False) -> dict[str, float]:
    import numpy
    from celery import Celery

    from celery_batching import batched, fastjson
    from celery_batching.protocol import BATCH_CHANNEL_PREFIX, CHANNEL_PREFIX, MessageDecoder
    from celery_batching.worker.arrays import as_rows
    from celery_batching.worker.claim import RedisQueue
    from celery_batching.worker.results import ResultWriter, TaskResult

    app = Celery(f"costsplit_{model}_{fast}", broker=f"{url}/0", backend=f"{url}/1")
    app.conf.batching_fast_json = fast
    app.conf.batching_batch_replies = fast
    task = batched(app, max_batch_size=BATCH, name=f"costsplit.{model}.{fast}")(_echo)
    queue = RedisQueue(app.connection_for_write().default_channel.client, task.batch_queue)
    results = app.backend.client
    decoder = MessageDecoder(task.name, task.batch_queue, {"application/json"}, None, fast_json=fast)
    writer = ResultWriter(app, task.name)
    channel = (BATCH_CHANNEL_PREFIX if fast else CHANNEL_PREFIX) + "costsplit"
    listener = results.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(channel)
    listener.get_message(timeout=1)
    decode_reply = fastjson.loads if fast else app.backend.decode
    spent = dict.fromkeys((*STAGES, WRITE_IN_REDIS), 0.0)
    redis_before = _redis_cpu(results)
    for b in range(batches):
        samples = list(range(b * BATCH, (b + 1) * BATCH))
        start = time.process_time()
        handles = [task.delay(s) for s in samples]
        spent["client send"] += time.process_time() - start
        start = time.process_time()
        claimed = queue.claim(BATCH).messages
        queue.ack([item.tag for item in claimed])
        spent["worker claim"] += time.process_time() - start
        start = time.process_time()
        messages = [decoder.decode(item) for item in claimed]
        spent["worker decode"] += time.process_time() - start
        outputs = samples if model == "noop" else numpy.repeat(numpy.asarray(samples, "float32")[:, None], 384, 1)
        start = time.process_time()
        rows = as_rows(outputs)
        date = app.now().isoformat()
        encoded = [
            writer._encode(TaskResult(m.task_id, "SUCCESS", row, reply_channel=channel), date)
            for m, row in zip(messages, rows)
        ]
        spent["result encode"] += time.process_time() - start
        store = writer._redis_store
        assert store is not None
        redis_at_write = _redis_cpu(results)
        start = time.process_time()
        store._write_scripted(encoded) if scripted else store.write(encoded)
        spent["result write"] += time.process_time() - start
        spent[WRITE_IN_REDIS] += _redis_cpu(results) - redis_at_write
        got = 0
        while got < BATCH:
            message = listener.get_message(timeout=5)
            if message is None:
                raise RuntimeError("a reply did not arrive")
            start = time.process_time()
            decoded = decode_reply(message["data"])
            spent["client receive"] += time.process_time() - start
            got += len(decoded) if isinstance(decoded, list) else 1
        del handles
    spent["redis"] = _redis_cpu(results) - redis_before
    listener.close()
    app.close()
    return {stage: seconds / (batches * BATCH) * 1e6 for stage, seconds in spent.items()}


def table(models: list[str], batches: int) -> str:
    """The split as a Markdown table, before and after side by side, for each model."""
    from .procs import RedisServer

    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory))
        try:
            rows = []
            for model in models:
                for label, fast, scripted in CONFIGURATIONS:
                    _measure(server.url, model, fast, 3, scripted)  # warm-up: imports, script loads, connections
                    rows.append((model, label, _measure(server.url, model, fast, batches, scripted)))
        finally:
            server.stop()
    lines = [
        f"µs of CPU per sample (process CPU, all threads), batch {BATCH}, {batches} batches, "
        f"{os.cpu_count()} CPUs (a shared machine: noisy).",
        "",
        "| model | codec / replies | " + " | ".join(STAGES) + f" | total | {WRITE_IN_REDIS} |",
        "|---|---|" + "---|" * (len(STAGES) + 2),
    ]
    for model, label, split in rows:
        cells = " | ".join(f"{split[s]:.1f}" for s in STAGES)
        total = sum(split[s] for s in STAGES)
        lines.append(f"| {model} | {label} | {cells} | {total:.1f} | {split[WRITE_IN_REDIS]:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.costsplit", description=__doc__)
    parser.add_argument("--batches", type=int, default=50, help="batches of 64 per configuration (default 50)")
    parser.add_argument("--models", nargs="+", default=["noop", "gpufast"], choices=["noop", "gpufast"])
    args = parser.parse_args(argv)
    print(table(args.models, args.batches))
    return 0


if __name__ == "__main__":
    sys.exit(main())
