"""Redis memory per queued request, and the cost of a depth read, on a private redis-server.

Sizing figures for docs/deployment.md: fills a batched queue with ``--messages``
requests of ``--text-bytes`` each (the demo's embed task, sent by the fast
path), reports Redis's ``used_memory`` per waiting and per claimed message,
and the time of one depth read (the exporter's scrape) at that depth and at
a depth of ten.

    python -m benchmarks.queue_memory --messages 20000 --text-bytes 200
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from tests.servers import RedisServer

QUEUE = "timed.stamp"


def used_memory(client) -> int:
    return int(client.info("memory")["used_memory"])


def read_times(reader, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        reader.read()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--text-bytes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=200, help="depth reads timed per depth")
    args = parser.parse_args()
    server = RedisServer().start()
    try:
        os.environ["CB_TEST_BROKER"] = server.url(0)
        from celery_batching import submit_many
        from celery_batching.worker.claim import RedisQueue
        from celery_batching.worker.depth import DepthReader, visibility_timeout
        from tests.apps import timed

        client = server.client(0)
        queue = RedisQueue(client, QUEUE, timed.app.conf.broker_transport_options)
        reader = DepthReader(queue, visibility_timeout(timed.app))
        text = "x" * args.text_bytes
        submit_many(timed.stamp, [text] * 10)
        small = read_times(reader, args.rounds)
        client.delete(*queue.list_keys)

        before = used_memory(client)
        for start in range(0, args.messages, 1000):
            submit_many(timed.stamp, [text] * min(1000, args.messages - start))
        waiting = used_memory(client) - before
        before = used_memory(client)
        claimed = len(queue.claim(args.messages).messages)
        claimed_bytes = used_memory(client) - before
        submit_many(timed.stamp, [text] * args.messages)  # a full queue beside the claims
        large = read_times(reader, args.rounds)
        depth = reader.read()
        print(f"request text {args.text_bytes} B, {args.messages} messages")
        print(f"redis memory per waiting message: {waiting / args.messages:.0f} B")
        print(f"redis memory per claimed message (on top, while claimed): {claimed_bytes / claimed:.0f} B")
        for name, times in (("depth 10", small), (f"depth {depth.waiting + depth.claimed}", large)):
            ms = sorted(t * 1000 for t in times)
            p50, p99 = statistics.median(ms), ms[int(len(ms) * 0.99) - 1]
            print(f"depth read at {name}: p50 {p50:.3f} ms, p99 {p99:.3f} ms")
        ratio = statistics.median(large) / statistics.median(small)
        print(f"ratio of p50 read time, large to small depth: {ratio:.2f}")
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
