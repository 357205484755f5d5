"""Client load for failover runs: threads that send and wait, and the tally of what they saw.

A task counts as lost when its ``.delay()`` returned (the caller was told it
was sent) but no right result came back by the deadline. A send that raised
is not lost: the caller knows, and can send again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

# How long one client waits for one result: longer than a failover plus a restore of dead claims.
RESULT_TIMEOUT_SECONDS = 60.0
# Pause after a send that raised, before the client sends its next task.
SEND_ERROR_PAUSE_SECONDS = 0.1


@dataclass
class Tally:
    """What the client threads saw, merged."""

    sent: int = 0
    done: int = 0
    send_errors: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    done_ids: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class LoadedClients:
    """``threads`` clients, each sending one task and waiting for it, over and over, until stopped."""

    def __init__(self, task: Any, threads: int, result_timeout: float = RESULT_TIMEOUT_SECONDS) -> None:
        self.task = task
        self.tally = Tally()
        self.result_timeout = result_timeout
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(k,), name=f"client-{k}", daemon=True) for k in range(threads)
        ]

    def __enter__(self) -> LoadedClients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def done(self) -> int:
        return self.tally.done

    def stop(self, timeout: float = RESULT_TIMEOUT_SECONDS + 10) -> None:
        """Let each client finish the task it waits on, then end."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    def _client(self, k: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            began = time.monotonic()
            outcome, detail = self._one(k * 10_000_000 + i)
            with self.tally.lock:
                if outcome == "refused":
                    self.tally.send_errors.append(detail)
                elif outcome == "lost":
                    self.tally.sent += 1
                    self.tally.lost.append(detail)
                else:
                    self.tally.sent += 1
                    self.tally.done += 1
                    self.tally.done_ids.append(detail)
                    self.tally.latencies.append(time.monotonic() - began)
            if outcome == "refused":
                self._stop.wait(SEND_ERROR_PAUSE_SECONDS)

    def _one(self, sample: int) -> tuple[str, str]:
        """Send ``sample`` and wait: ("done", task id), ("refused", why) or ("lost", task id and why)."""
        try:
            result = self.task.delay(sample)
        except Exception as exc:  # noqa: BLE001 - counted; the caller would send again
            return "refused", f"{type(exc).__name__}: {exc}"
        try:
            value = result.get(timeout=self.result_timeout)
        except Exception as exc:  # noqa: BLE001 - a lost task, named with why
            return "lost", f"{result.id}: {type(exc).__name__}: {exc}"
        if value != 2 * sample:
            return "lost", f"{result.id}: wrong result {value!r} for {sample}"
        return "done", result.id
