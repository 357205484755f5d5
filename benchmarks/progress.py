"""A progress display on stderr: one line per measurement, with elapsed time and an estimate left."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .stats import Measurement


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"


class Progress:
    """Counts measurements done out of ``total``; the estimate assumes the rest take as long on average."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.started = time.monotonic()

    def note(self, text: str) -> None:
        print(f"        {text}", file=self.stream, flush=True)

    def measured(self, what: str, workload: str, m: Measurement) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        left = elapsed / self.done * (self.total - self.done)
        if workload == "light":
            figure = f"p50 {m.p50 * 1000:.1f} ms, p99 {m.p99 * 1000:.1f} ms"
        elif workload == "http":
            figure = f"{m.throughput:,.0f} requests/s, p50 {m.p50 * 1000:.1f} ms, p99 {m.p99 * 1000:.1f} ms"
        else:
            figure = f"{m.throughput:,.0f} samples/s, batch {m.mean_batch:.1f}"
            if workload == "saturation":
                figure += f", p50 {m.p50 * 1000:.1f} ms"
        flags = (" [time limit]" if m.capped else "") + (f" [{m.failed} failed]" if m.failed else "")
        print(
            f"[{self.done:>3}/{self.total} {_clock(elapsed)} ~{_clock(left)} left] {what} {workload}: {figure}{flags}",
            file=self.stream,
            flush=True,
        )
