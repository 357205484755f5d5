"""The client side of the Celery version matrix, run by a matrix venv's Python.

``python -m tests.version_client paths`` checks the client paths once each;
``python -m tests.version_client load P T N`` keeps P processes x T threads of
``.delay(x).get()`` in flight, N calls per thread. Either prints one JSON line:
the Celery version it ran under and what went wrong (empty lists when nothing did).
"""

from __future__ import annotations

import gc
import json
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from typing import Any

import celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult

from celery_batching import submit_many
from celery_batching.client.replies import BatchedResult
from tests.apps import versions

GET_TIMEOUT = 20.0


def check_paths() -> list[str]:
    """Each client path once: what differs from what Celery promises."""
    problems: list[str] = []

    def expect(what: str, got: Any, wanted: Any) -> None:
        if got != wanted:
            problems.append(f"{what}: got {got!r}, wanted {wanted!r}")

    fast = versions.echo.delay(1)
    expect("fast path result type", type(fast).__name__, BatchedResult.__name__)
    expect("fast path value", fast.get(timeout=GET_TIMEOUT), 1)
    # Options the fast path does not cover go through Celery's own apply_async.
    slow = versions.echo.apply_async((2,), headers={"origin": "matrix"})
    expect("Celery path result type", type(slow).__name__, AsyncResult.__name__)
    expect("Celery path value", slow.get(timeout=GET_TIMEOUT), 2)
    expect("result rebuilt from its id", AsyncResult(fast.id, app=versions.app).get(timeout=GET_TIMEOUT), 1)
    batch = submit_many(versions.sizes, range(8))
    expect("one push runs as one batch", [r.get(timeout=GET_TIMEOUT) for r in batch], [8] * 8)
    failed = versions.refuse.delay("x")
    try:
        failed.get(timeout=GET_TIMEOUT)
        problems.append("a failed task's get() raised nothing")
    except ValueError as exc:
        expect("failure propagated", str(exc), "refused 'x'")
    expect("failed state", failed.state, "FAILURE")
    expect("UNSUBSCRIBEs on this thread's result consumer from results fulfilled elsewhere", other_threads_cost(), 0)
    return problems


def other_threads_cost() -> int:
    """How many UNSUBSCRIBEs results fulfilled in another thread send, once this thread's result consumer runs.

    This thread built the reply hub (the first call above), and its Celery-path
    calls started its result consumer; Celery before 5.7 does not lock that
    consumer's pub/sub, so none of another thread's results may touch it.
    """
    client = versions.app.backend.client

    def unsubscribes() -> int:
        return int(client.info("commandstats").get("cmdstat_unsubscribe", {}).get("calls", 0))

    def other_thread() -> None:
        for x in range(20):
            versions.echo.delay(x).get(timeout=GET_TIMEOUT)

    gc.collect()  # results of this thread in reference cycles: their __del__ would unsubscribe, from any thread
    before = unsubscribes()
    with ThreadPoolExecutor(1) as pool:
        pool.submit(other_thread).result()
    return unsubscribes() - before


def run_threads(threads: int, calls: int, first: int) -> list[dict[str, Any]]:
    """``threads`` threads of ``calls`` sequential ``.delay(x).get()``; the calls that did not get ``x`` back."""

    def one_thread(start: int) -> list[dict[str, Any]]:
        wrong = []
        for x in range(start, start + calls):
            result = versions.echo.delay(x)
            try:
                got = result.get(timeout=GET_TIMEOUT)
            except CeleryTimeoutError:
                stored = versions.app.backend.get_task_meta(result.id, cache=False)["status"]
                wrong.append({"task_id": result.id, "sent": x, "error": "timeout", "stored": stored})
                continue
            if got != x:
                wrong.append({"task_id": result.id, "sent": x, "got": got})
        return wrong

    with ThreadPoolExecutor(threads) as pool:
        return [w for part in pool.map(one_thread, range(first, first + threads * calls, calls)) for w in part]


def run_load(processes: int, threads: int, calls: int) -> list[dict[str, Any]]:
    per_process = threads * calls
    # spawn: each process starts clean and builds its own reply hub and connections.
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        firsts = range(0, processes * per_process, per_process)
        parts = pool.map(run_threads, [threads] * processes, [calls] * processes, firsts)
        return [w for part in parts for w in part]


def main(argv: list[str]) -> None:
    report: dict[str, Any] = {"celery": celery.__version__}
    if argv[0] == "paths":
        report["problems"] = check_paths()
    else:
        processes, threads, calls = (int(a) for a in argv[1:4])
        report["calls"] = processes * threads * calls
        report["lost"] = run_load(processes, threads, calls)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
