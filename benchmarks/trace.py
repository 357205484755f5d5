"""A per-process log of every ``predict`` call: when it ran and on how many samples.

Worker-side figures (drain throughput, batch sizes) must not depend on how
each system reports progress, so the bench models themselves append one line
per call to ``$BENCH_TRACE_DIR/predict-<pid>.log``. A line is written with one
``O_APPEND`` write (a few microseconds), so the harness can read the logs
while workers run. Stdlib only: the anchors' venv imports this too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Directory the bench models write their logs to; unset means no log.
TRACE_ENV = "BENCH_TRACE_DIR"


class PredictTrace:
    """Appends ``start end samples`` lines (wall-clock seconds) for one process."""

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._fd: int | None = None
        self._pid = -1

    def record(self, start: float, end: float, samples: int) -> None:
        """Log one predict call; opens the file lazily so forked children get their own."""
        if self._fd is None or self._pid != os.getpid():
            self._pid = os.getpid()
            path = os.path.join(self._directory, f"predict-{self._pid}.log")
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(self._fd, f"{start:.6f} {end:.6f} {samples}\n".encode())


def mark_loaded() -> None:
    """Tell the harness this process has loaded its model (``loaded-<pid>``)."""
    directory = os.environ.get(TRACE_ENV)
    if directory:
        Path(directory, f"loaded-{os.getpid()}").touch()


def loaded_count(directory: str | Path) -> int:
    """Processes that have loaded their model since the markers were last cleared."""
    return len(list(Path(directory).glob("loaded-*")))


def clear_loaded(directory: str | Path) -> None:
    """Forget earlier markers before starting a new set of workers."""
    for path in Path(directory).glob("loaded-*"):
        path.unlink()


def from_env() -> PredictTrace | None:
    """The trace this process should write, or ``None`` when the harness asked for none."""
    directory = os.environ.get(TRACE_ENV)
    return PredictTrace(directory) if directory else None


@dataclass(frozen=True)
class Call:
    """One logged predict call."""

    start: float
    end: float
    samples: int


def read_calls(directory: str | Path) -> list[Call]:
    """Every complete line of every process's log, in start order."""
    calls: list[Call] = []
    for path in Path(directory).glob("predict-*.log"):
        text = path.read_text()
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                continue  # a line still being written
            start, end, samples = line.split()
            calls.append(Call(float(start), float(end), int(samples)))
    calls.sort(key=lambda call: call.start)
    return calls


def samples_done(directory: str | Path) -> int:
    """Samples predicted so far, all processes together."""
    return sum(call.samples for call in read_calls(directory))


def window(calls: list[Call], since: float, until: float) -> list[Call]:
    """The calls that started within ``[since, until]``."""
    return [call for call in calls if since <= call.start <= until]
