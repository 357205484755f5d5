"""The benchmark's entry point: ``python -m benchmarks.run [--quick] [--systems ...] ...``.

Runs every chosen system on every chosen model, each workload repeated,
then writes ``benchmarks/results/<stamp>.md`` (the tables), ``.json`` (every
figure of every repetition) and two PNG plots, and prints the tables.
``--workloads http`` (opt-in) needs wrk: ``apt-get install -y wrk``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from . import plots, report
from .knobs import ANCHOR_MAX_WAIT, BATCH_SIZE
from .models import MODELS
from .procs import REDIS_SERVER, HarnessError
from .progress import Progress
from .runner import DEFAULT_WORKLOADS, WORKLOADS, Case, Sizes, run_case, workloads_of
from .systems import PYTHONS, REPO, SYSTEMS

RESULTS = REPO / "benchmarks" / "results"
# --quick: the same tables in a few minutes, with smaller workloads.
QUICK_SIZES = Sizes(saturation=600, drain=600, light=30, clients=2, seconds=8.0, warmup=2, http_seconds=5.0)
# Package versions named in the report's preamble, per venv.
VERSIONED = ("celery", "kombu", "redis", "celery-batching", "celery-batches", "service_streamer", "torch")


def _counts(text: str) -> list[int]:
    return sorted({int(part) for part in text.split(",") if part.strip()})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small workloads, noop and simgpu (a few minutes)")
    parser.add_argument("--systems", nargs="+", choices=sorted(SYSTEMS), help="default: all")
    parser.add_argument(
        "--models", nargs="+", choices=sorted(MODELS), help="default: noop simgpu minilm (--quick: noop simgpu)"
    )
    parser.add_argument(
        "--workloads",
        nargs="+",
        choices=WORKLOADS,
        default=list(DEFAULT_WORKLOADS),
        help="default: drain light saturation; http (the Django demo under gunicorn and wrk, "
        "ours and naive on minilm only) is opt-in and needs: apt-get install -y wrk",
    )
    parser.add_argument(
        "--workers",
        type=_counts,
        default=[1, 2, 4],
        help="worker counts for celery-batching's batched task (default 1,2,4)",
    )
    parser.add_argument(
        "--anchor-workers",
        type=_counts,
        default=[1],
        help="worker counts for Streamer, RedisStreamer, plain Celery, celery-batches (default 1)",
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each workload (default 3)")
    parser.add_argument("--saturation", type=int, help="saturation requests per repetition")
    parser.add_argument("--drain", type=int, help="drain requests per worker per repetition")
    parser.add_argument("--light", type=int, help="light-load requests per repetition")
    parser.add_argument("--clients", type=int, help="client processes for systems behind Redis")
    parser.add_argument("--seconds", type=float, help="time limit of one workload")
    parser.add_argument("--http-seconds", type=float, help="how long wrk sends, per repetition (default 10)")
    parser.add_argument("--gpu", action="store_true", help="run the models on cuda:0")
    parser.add_argument(
        "--cost-split",
        action="store_true",
        help="also report µs per sample by stage (client send, worker decode, result encode and write, "
        "client receive, redis) for noop and gpufast, before/after the fast codec (benchmarks.costsplit)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the report")
    args = parser.parse_args(argv)
    if "http" in args.workloads and shutil.which("wrk") is None:
        parser.error("--workloads http needs wrk: apt-get install -y wrk")
    return args


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = QUICK_SIZES if args.quick else Sizes()
    overrides = {
        name: getattr(args, name)
        for name in ("saturation", "drain", "light", "clients", "seconds", "http_seconds")
        if getattr(args, name) is not None
    }
    return replace(sizes, **overrides)


def plan(args: argparse.Namespace, notes: list[str]) -> list[Case]:
    """The cases to run, ``direct`` first for each model (the ratios need it)."""
    names = args.systems or list(SYSTEMS)
    models = args.models or (["noop", "simgpu"] if args.quick else ["noop", "simgpu", "minilm"])
    missing = sorted({SYSTEMS[n].venv for n in names if not SYSTEMS[n].available()})
    for venv in missing:
        skipped = [n for n in names if SYSTEMS[n].venv == venv]
        hint = " (run: bash benchmarks/setup_anchors.sh)" if venv == "anchors" else ""
        notes.append(f"skipped {', '.join(skipped)}: {PYTHONS[venv]} is missing{hint}")
    names = [n for n in names if SYSTEMS[n].available()]
    cases = []
    for model in models:
        for name in sorted(names, key=lambda n: n != "direct"):
            system = SYSTEMS[name]
            counts = (args.workers if name == "ours" else args.anchor_workers) if system.scalable else [1]
            cases += [Case(system, model, workers) for workers in counts]
    wanted = tuple(args.workloads)
    runnable = [case for case in cases if workloads_of(case, wanted)]
    if "http" in wanted and not any("http" in workloads_of(case, wanted) for case in runnable):
        notes.append("http skipped: it runs only for the systems ours and naive on the model minilm")
    return runnable


def _versions() -> str:
    """Versions of the packages that matter, per venv, plus redis-server's."""
    script = (
        "import importlib.metadata as m\n"
        f"for n in {VERSIONED!r}:\n"
        "    try: print(n, m.version(n))\n"
        "    except m.PackageNotFoundError: pass\n"
    )
    lines = []
    for venv, python in PYTHONS.items():
        if python.exists():
            out = subprocess.run([str(python), "-c", script], capture_output=True, text=True).stdout.split("\n")
            lines.append(f"{venv} venv: " + ", ".join(line for line in out if line))
    redis = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True).stdout.split()
    lines.append("redis-server " + next((w[2:] for w in redis if w.startswith("v=")), "?"))
    return "; ".join(lines)


def _device_name() -> str:
    """cuda:0 and the GPU's own name, for a report that says what it ran on."""
    import torch

    return f"cuda:0 ({torch.cuda.get_device_name(0)})"


def preamble(args: argparse.Namespace, sizes: Sizes) -> str:
    return (
        f"{time.strftime('%Y-%m-%d %H:%M')} on {platform.node()}: {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, device {_device_name() if args.gpu else 'cpu'}"
        f"{', --quick' if args.quick else ''}. {args.reps} repetitions.\n\n"
        f"Knobs: batch {BATCH_SIZE} for every system; batching window {ANCHOR_MAX_WAIT} s for "
        f"service-streamer (max_latency) and celery-batches (flush_interval); celery-batching at its "
        f"default max_wait=0. Celery workers: --pool solo, one process per worker. "
        f"OMP_WAIT_POLICY=PASSIVE for every process.\n\n"
        f"Sizes: saturation {sizes.saturation} requests with {sizes.in_flight} in flight "
        f"({sizes.clients} client processes for systems behind Redis, else one); drain {sizes.drain} "
        f"requests per worker; light load {sizes.light} requests; each workload stops sending after "
        f"{sizes.seconds:g} s."
        + (
            f" http: wrk for {sizes.http_seconds:g} s with {sizes.in_flight} connections, one text per "
            f"request; gunicorn, one process, {sizes.in_flight} threads."
            if "http" in args.workloads
            else ""
        )
        + f"\n\nVersions: {_versions()}."
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_from(args)
    device = "cuda:0" if args.gpu else "cpu"
    notes: list[str] = []
    cases = plan(args, notes)
    progress = Progress(sum(len(workloads_of(case, tuple(args.workloads))) for case in cases) * args.reps)
    for note in notes:
        progress.note(note)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    rows: list[report.Row] = []
    for case in cases:
        what = f"{case.model} · {case.system.name}" + (f" ×{case.workers}" if case.system.scalable else "")

        def on_result(rep: int, workload: str, measurement, what: str = what) -> None:
            progress.measured(f"{what} · rep {rep + 1}/{args.reps} ·", workload, measurement)

        try:
            reps = run_case(case, sizes, tuple(args.workloads), args.reps, device, on_result)
        except HarnessError as exc:
            notes.append(f"{what} did not complete: {str(exc).splitlines()[0]}")
            progress.note(f"{what} FAILED: {exc}")
            continue
        rows.append(report.Row(case.system, case.model, case.workers, reps))
        _write_json(args.out / f"{stamp}.json", rows)
    pngs = _plot(rows, args, stamp, notes)
    text = report.document("celery-batching benchmark", preamble(args, sizes), rows, args.workloads, notes, pngs)
    if args.cost_split:
        from .costsplit import table

        text += "\n\n## Cost per sample, by stage\n\n" + table(["noop", "gpufast"], 50) + "\n"
    path = args.out / f"{stamp}.md"
    path.write_text(text)
    print(text)
    print(f"written: {path}", file=sys.stderr)
    return 0 if rows else 1


def _plot(rows: list[report.Row], args: argparse.Namespace, stamp: str, notes: list[str]) -> list[str]:
    """The PNGs, or none (with a note) without matplotlib or saturation figures."""
    if not rows or "saturation" not in args.workloads:
        return []
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        notes.append("plots skipped: matplotlib is not installed (pip install matplotlib)")
        return []
    pngs = [f"{stamp}-throughput.png", f"{stamp}-latency.png"]
    plots.throughput_vs_workers(rows, args.out / pngs[0], args.workloads)
    plots.latency_percentiles(rows, args.out / pngs[1])
    return pngs


def _write_json(path: Path, rows: list[report.Row]) -> None:
    """Every figure of every repetition, rewritten after each case (a stopped run keeps them)."""
    payload = [
        {
            "system": row.system.name,
            "model": row.model,
            "workers": row.workers,
            "reps": [{w: m.as_json() for w, m in rep.items()} for rep in row.reps],
        }
        for row in rows
    ]
    path.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    sys.exit(main())
