"""What a Sentinel failover costs: tasks lost, writes dropped, run twice, and what WAIT buys.

``python -m benchmarks.failover [--clients 8] [--before 3] [--after 6] [--lag-ms 0,50] [--wait 0,1] [--rounds 1]``

For each replication lag and ``batching_wait_replicas`` value: a private
Sentinel set (master, replica, three sentinels; tests.servers.SentinelSet),
one worker of ``tests.apps.faulty`` (its ``faulty.soak`` task) and
``--clients`` threads that send one task and wait for it, over and over. After
``--before`` seconds the master is killed (SIGKILL); once the replica is
promoted the old master comes back as its replica, and the load goes on
``--after`` seconds more. A lag above 0 puts a relay (benchmarks.lag_proxy) on
the replica's link, delaying it that much each way.

Per run it prints: tasks whose send returned but whose result never came
(lost: their push was dropped), results a client got that the new master does
not hold (dropped result writes), sends refused (the caller was told),
samples run twice, how far behind the replica was at the kill, seconds from the kill to the promotion, throughput, and
p50/p99 latency of the tasks that completed. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.stats import percentile
from tests.failover_tools import LoadedClients
from tests.fault_tools import RESULT_PREFIX, Records, load_app
from tests.lag_proxy import LagProxy
from tests.servers import SentinelSet, Worker

APP = "tests.apps.faulty"
QUEUE = "faulty.soak"
# How long a dead worker's (or a lost ack's) claims wait before another look takes them back.
VISIBILITY_TIMEOUT = "5"
# A client gives a task up after this long: a failover plus a restore, with room to spare.
RESULT_TIMEOUT_SECONDS = 20.0


def run_once(clients: int, before: float, after: float, lag_ms: float, wait_replicas: int) -> dict:
    proxies: list[LagProxy] = []

    def relay(port: int) -> int:
        proxies.append(LagProxy(port, lag_ms / 1000).start())
        return proxies[-1].port

    servers = SentinelSet(replica_link=relay if lag_ms else None).start()
    record_dir = Path(tempfile.mkdtemp(prefix="cb-failover-"))
    env = {
        "CB_TEST_BACKEND": servers.url(1),
        "CB_VISIBILITY_TIMEOUT": VISIBILITY_TIMEOUT,
        "CB_WAIT_REPLICAS": str(wait_replicas),
        "CB_RECORD_DIR": str(record_dir),
        "CB_BATCH_SECONDS": "0.002",
    }
    worker = Worker(APP, servers.url(0), "-Q", f"{QUEUE},celery", env=env)
    try:
        worker.start()
        faulty = load_app(APP, servers.url(0), servers.url(1))
        faulty.app.conf.batching_wait_replicas = wait_replicas  # before the first send reads it
        with LoadedClients(faulty.soak, clients, result_timeout=RESULT_TIMEOUT_SECONDS) as load:
            time.sleep(before)  # a benchmark's load phase, not a test's wait
            killed = time.monotonic()
            behind = replica_behind_bytes(servers)
            steady_rate = load.done() / before
            promoted = servers.fail_over()
            time.sleep(after)
            load.stop()
            seconds = time.monotonic() - killed + before
        tally = load.tally
        stored = servers.master.client(1)  # the promoted one
        missing = sum(1 for task_id in tally.done_ids if not stored.exists(RESULT_PREFIX + task_id))
        runs = Records(record_dir).runs("soak")
    finally:
        worker.stop()
        servers.stop()
        for proxy in proxies:
            proxy.close()
        worker.log_path.unlink(missing_ok=True)
    return {
        "lag_ms": lag_ms,
        "wait_replicas": wait_replicas,
        "sent": tally.sent,
        "lost": len(tally.lost),
        "dropped_results": missing,
        "refused_sends": len(tally.send_errors),
        "run_twice": sum(1 for count in runs.values() if count > 1),
        "replica_behind_bytes": behind,
        "promotion_s": round(promoted, 2),
        "tasks_per_s": round(tally.done / seconds, 1),
        "tasks_per_s_before_kill": round(steady_rate, 1),
        "p50_ms": round(1000 * percentile(tally.latencies, 50), 1),
        "p99_ms": round(1000 * percentile(tally.latencies, 99), 1),
        "lost_examples": tally.lost[:3],
    }


def replica_behind_bytes(servers: SentinelSet) -> int:
    """How much of the replication stream the replica has yet to apply (read just before the kill)."""
    master = int(servers.master.client().info("replication")["master_repl_offset"])
    replica = int(servers.replica.client().info("replication").get("slave_repl_offset", 0))
    return max(master - replica, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--before", type=float, default=3.0, help="seconds of load before the kill")
    parser.add_argument("--after", type=float, default=6.0, help="seconds of load after the promotion")
    parser.add_argument("--lag-ms", default="0,50", help="replica link lags to try, comma-separated")
    parser.add_argument("--wait", default="0,1", help="batching_wait_replicas values to try")
    parser.add_argument("--rounds", type=int, default=1, help="failovers per combination")
    args = parser.parse_args(argv)
    rows = [
        run_once(args.clients, args.before, args.after, float(lag), int(wait))
        for lag in args.lag_ms.split(",")
        for wait in args.wait.split(",")
        for _ in range(args.rounds)
    ]
    for row in rows:
        print(
            f"failover lag={row['lag_ms']:g}ms wait_replicas={row['wait_replicas']}: sent {row['sent']}, "
            f"lost {row['lost']}, dropped results {row['dropped_results']}, refused sends {row['refused_sends']}, "
            f"run twice {row['run_twice']}, replica behind {row['replica_behind_bytes']} B, "
            f"promotion {row['promotion_s']}s, {row['tasks_per_s_before_kill']} tasks/s before the kill, "
            f"{row['tasks_per_s']} overall, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms"
        )
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
