"""When to flush a batch: a pure decision, no I/O, the time passed in.

The engine asks :meth:`FlushPolicy.decide` each time something changes (a
sample arrived, the model became free, a deadline passed) and does what it
says. Keeping the rule here, apart from threads and sockets, lets it be
tested as a table of cases.

The rule:

* a full batch (``max_batch_size`` samples) runs at once;
* with ``max_wait == 0`` (the default) an idle model runs whatever is
  pending at once, so a lone request never waits for company; under load
  the batch grows by itself while the previous one runs;
* with ``max_wait > 0`` a partial batch waits until its oldest sample has
  waited ``max_wait`` seconds, then runs. Since the engine only asks while
  the model is free, no sample waits more than ``max_wait`` plus one
  ``predict``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigurationError


@dataclass(frozen=True)
class Flush:
    """Run a batch of ``size`` samples now."""

    size: int


@dataclass(frozen=True)
class WaitUntil:
    """Nothing to run yet; ask again at ``deadline`` or when a sample arrives."""

    deadline: float


@dataclass(frozen=True)
class Idle:
    """Nothing pending; sleep until a sample arrives."""


Decision = Flush | WaitUntil | Idle


@dataclass(frozen=True)
class FlushPolicy:
    """Batch-size and waiting knobs of one batched task.

    ``max_batch_size`` caps a batch; ``max_wait`` (seconds) is how long a
    partial batch may wait for company when the model is free.
    """

    max_batch_size: int = 64
    max_wait: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.max_batch_size, bool) or not isinstance(self.max_batch_size, int):
            raise ConfigurationError(
                f"max_batch_size must be an int >= 1, got {type(self.max_batch_size).__name__} {self.max_batch_size!r}"
            )
        if self.max_batch_size < 1:
            raise ConfigurationError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if isinstance(self.max_wait, bool) or not isinstance(self.max_wait, (int, float)):
            raise ConfigurationError(
                f"max_wait must be a number of seconds >= 0, got {type(self.max_wait).__name__} {self.max_wait!r}"
            )
        if not 0 <= self.max_wait < float("inf"):
            raise ConfigurationError(f"max_wait must be finite and >= 0 seconds, got {self.max_wait}")

    def room(self, waiting: int, model_busy: bool) -> int:
        """How many more samples may be claimed beside ``waiting`` ones (pending, or run and not yet stored).

        No hoarding: what a worker holds is at most the running batch and one
        batch beyond it. While the model is idle, that one beyond may be a batch
        still being stored, and the next batch may be claimed to run meanwhile;
        one claim is never more than a batch.
        """
        limit = self.max_batch_size if model_busy else 2 * self.max_batch_size
        return max(0, min(self.max_batch_size, limit - waiting))

    def decide(self, pending: int, oldest_arrival: float | None, now: float) -> Decision:
        """What a free model should do with ``pending`` samples at time ``now``.

        ``oldest_arrival`` is when the oldest pending sample was claimed
        (``None`` when nothing is pending).
        """
        if pending <= 0 or oldest_arrival is None:
            return Idle()
        if pending >= self.max_batch_size:
            return Flush(self.max_batch_size)
        deadline = oldest_arrival + self.max_wait
        if now >= deadline:
            return Flush(pending)
        return WaitUntil(deadline)
