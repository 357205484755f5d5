"""The Markdown report: one table per model, medians with min–max over repetitions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .stats import CPU_PARTS, Measurement, Spread
from .systems import System


@dataclass
class Row:
    """All repetitions of one case."""

    system: System
    model: str
    workers: int
    reps: list[dict[str, Measurement]]

    def spread(self, workload: str, figure: str) -> Spread:
        return Spread.of(getattr(rep[workload], figure) for rep in self.reps if workload in rep)

    def cpu(self, part: str | None = None, workload: str = "saturation") -> float:
        """Median CPU seconds per request of ``workload`` (all parts, or one)."""
        values = [
            rep[workload].cpu_total if part is None else rep[workload].cpu.get(part, math.nan)
            for rep in self.reps
            if workload in rep and rep[workload].cpu
        ]
        return Spread.of(values).median

    def failed(self) -> int:
        return sum(m.failed for rep in self.reps for m in rep.values())

    def capped(self, workload: str) -> bool:
        return any(rep[workload].capped for rep in self.reps if workload in rep)

    def first_error(self) -> str | None:
        return next((m.first_error for rep in self.reps for m in rep.values() if m.first_error), None)


def _number(value: float, digits: int) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:,.{digits}f}" if abs(value) < 10**6 else f"{value:.3g}"


def _cell(spread: Spread, scale: float = 1.0, digits: int = 0) -> str:
    """``median (min–max)``, scaled (e.g. seconds to milliseconds)."""
    if math.isnan(spread.median):
        return "–"
    lo, mid, hi = spread.low * scale, spread.median * scale, spread.high * scale
    return f"{_number(mid, digits)} ({_number(lo, digits)}–{_number(hi, digits)})"


def _ms_digits(seconds: float) -> int:
    """Decimals for a latency in ms: three below 0.1 ms, two below 10 ms, else one."""
    return 3 if seconds < 0.0001 else 2 if seconds < 0.01 else 1


def _cpu_cell(row: Row, workload: str, scale: float, digits: int) -> str:
    """``total (client / worker / redis)`` CPU per request of ``workload``, scaled from seconds."""
    total = row.cpu(workload=workload)
    if math.isnan(total):
        return "–"
    parts = " / ".join(_number(row.cpu(part, workload) * scale, digits) for part in CPU_PARTS)
    return f"{_number(total * scale, digits)} ({parts})"


def _ratio(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.1e}" if value < 0.01 else f"{value:.2f}"


def table(rows: Sequence[Row], workloads: Sequence[str]) -> str:
    """One Markdown table for the rows of one model."""
    direct = next((row for row in rows if row.system.name == "direct"), None)
    base = {w: direct.spread(w, "throughput").median if direct else math.nan for w in ("saturation", "drain")}
    header = ["system", "workers"]
    if "saturation" in workloads:
        header += ["saturation samples/s", "× direct", "sat. p50 ms", "sat. p99 ms"]
    if "drain" in workloads:
        header += ["drain samples/s", "× direct", "drain CPU µs/sample (client / worker / redis)"]
    if "light" in workloads:
        header += ["light p50 ms", "light p99 ms"]
    if "saturation" in workloads:
        header += ["CPU ms/req (client / worker / redis)", "mean batch"]
    if "http" in workloads:
        header += ["HTTP req/s", "HTTP p50 ms", "HTTP p99 ms"]
    header += ["failed"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.system.label, str(row.workers) if row.system.scalable else "–"]
        for workload in ("saturation", "drain", "light"):
            if workload not in workloads:
                continue
            if workload in ("saturation", "drain"):
                throughput = row.spread(workload, "throughput")
                mark = " †" if row.capped(workload) else ""
                cells += [_cell(throughput) + mark, _ratio(throughput.median / base[workload])]
            if workload == "drain":
                cells.append(_cpu_cell(row, "drain", 1e6, 0))
            if workload in ("saturation", "light"):
                p50, p99 = row.spread(workload, "p50"), row.spread(workload, "p99")
                cells += [_cell(p50, 1000, _ms_digits(p50.median)), _cell(p99, 1000, _ms_digits(p99.median))]
        if "saturation" in workloads:
            cells += [_cpu_cell(row, "saturation", 1000, 2), _number(row.spread("saturation", "mean_batch").median, 1)]
        if "http" in workloads:
            p50, p99 = row.spread("http", "p50"), row.spread("http", "p99")
            cells += [
                _cell(row.spread("http", "throughput")),
                _cell(p50, 1000, _ms_digits(p50.median)),
                _cell(p99, 1000, _ms_digits(p99.median)),
            ]
        cells.append(str(row.failed()))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


LEGEND = """\
Each figure is the median over the repetitions, with (min–max). "× direct" divides the median by
direct's median from the same run. † marks a workload stopped at its time limit: its figure covers
the requests that ran. "failed" counts requests that raised or returned a wrong result (all workloads).

* **saturation**: `in_flight` requests in flight at all times (closed loop: each client thread sends
  one request, waits for its result, sends the next), from several client processes for systems
  behind Redis and from one process's threads for in-process systems. samples/s = requests / (last
  answer − first send); p50/p99 are per-request latencies seen by the client.
* **drain**: `drain` requests per worker are queued first, then the workers start. For systems behind
  Redis the queue is moved out of reach until every worker has loaded its model and answers, then
  handed to all at once; samples/s is measured by the model itself, from that hand-over to the end of
  its last `predict`: the worker side alone, without start-up skew. In-process systems have no
  workers to start: for them it is samples per `predict` cycle (first start to last start).
* **drain CPU µs/sample**: CPU time of every process from the hand-over to the end of the last
  `predict`, divided by the samples drained: the clients (receiving the replies), the workers and
  redis-server. Steadier than samples/s on a shared machine, whose speed drifts between runs.
* **light**: one request in flight; p50/p99 latency.
* **CPU ms/req**: CPU time (user + system) of every process during the saturation workload, divided
  by its requests: the client processes, the worker processes (with their children), and redis-server.
* **mean batch**: samples per `predict` call during the saturation workload.
* **HTTP** (only with `--workloads http`): the Django demo under gunicorn (one process, a thread per
  connection), `wrk -t2 -c<in_flight> --latency`, one text per `POST`, MiniLM only. celery-batching's
  row is the demo's `/api/embed` (a batched task, the demo's own workers); naive's is
  `/api/naive/embed` (`INFERENCE_NAIVE=1`: the web process runs `predict([text])` per request).
  req/s and p50/p99 latency as wrk measures them.
"""


def document(
    title: str, preamble: str, rows: Sequence[Row], workloads: Sequence[str], notes: Sequence[str], plots: Sequence[str]
) -> str:
    """The whole report: preamble, one section per model, legend, notes, plots."""
    parts = [f"# {title}", "", preamble, ""]
    for model in dict.fromkeys(row.model for row in rows):
        parts += [f"## {model}", "", table([r for r in rows if r.model == model], workloads), ""]
    parts += ["## How to read this", "", LEGEND]
    errors = [(row, row.first_error()) for row in rows if row.failed() and row.first_error()]
    if notes or errors:
        parts += ["## Notes", ""] + [f"* {note}" for note in notes]
        parts += [
            f"* {row.system.label} ×{row.workers} on {row.model}, first error: `{error.strip().splitlines()[-1]}`"
            for row, error in errors
        ]
        parts.append("")
    parts += [f"![{name}]({name})" for name in plots]
    return "\n".join(parts) + "\n"
