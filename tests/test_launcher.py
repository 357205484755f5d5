"""The ``celery-batching workers`` launcher: its restart rule as a table, its
command line, and (marked slow) the real thing: worker processes against a
real redis-server, killed and restarted, stopped with SIGTERM.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from celery_batching.cli import WORKERS_OPTIONS, add_options
from celery_batching.devices import plan_workers
from celery_batching.errors import ConfigurationError
from celery_batching.launcher import RestartPolicy, restart_delay, with_device, worker_command, worker_env

ROOT = Path(__file__).resolve().parent.parent  # the repository; the CLI runs from here

POLICY = RestartPolicy(max_restarts=3, window=60.0, base_delay=1.0, max_delay=8.0)


@pytest.mark.parametrize(
    "restarts, now, delay, limited",
    [
        # First death: restart after the base delay.
        ([], 100.0, 1.0, False),
        # Each restart inside the window doubles the delay.
        ([99.0], 100.0, 2.0, False),
        ([95.0, 99.0], 100.0, 4.0, False),
        # Restarts older than the window are forgotten: the backoff resets.
        ([10.0, 20.0, 30.0], 100.0, 1.0, False),
        ([30.0, 95.0], 100.0, 2.0, False),
        # At the cap (3 per 60 s) the next restart waits for the oldest to leave the window.
        ([50.0, 90.0, 99.0], 100.0, 10.0, True),
        ([41.0, 42.0, 43.0, 99.0], 100.0, 8.0, True),
        # The doubling is capped at max_delay even when the window is almost free.
        ([40.5, 41.0, 41.5], 100.0, 8.0, True),
    ],
)
def test_restart_delay(restarts, now, delay, limited):
    decision = restart_delay(POLICY, restarts, now)
    assert (decision.delay, decision.limited) == (pytest.approx(delay), limited)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_restarts": 0}, "max_restarts must be >= 1"),
        ({"window": -1.0}, "window must be >= 0 seconds"),
        ({"base_delay": -0.5}, "base_delay must be >= 0 seconds"),
        ({"max_delay": -2}, "max_delay must be >= 0 seconds"),
    ],
)
def test_restart_policy_rejects(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        RestartPolicy(**kwargs)


def test_worker_command_and_env():
    # Given GPU 2's worker, When its command and env are built, Then it is a solo-pool worker pinned to GPU 2.
    spec = plan_workers([2], 1, None, cores=4)[0]
    assert worker_command(spec, "proj", "DEBUG", ["a", "b"], ["--without-gossip"]) == [
        sys.executable, "-m", "celery", "-A", "proj", "worker", "--pool", "solo",
        "-n", "gpu2-0@%h", "--loglevel", "DEBUG", "-Q", "a,b", "--without-gossip",
    ]  # fmt: skip
    env = worker_env(spec, {"PATH": "/bin", "OMP_NUM_THREADS": "7", "CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    assert env["CUDA_VISIBLE_DEVICES"] == "2" and env["CELERY_BATCHING_DEVICE"] == "cuda:0"
    # The operator's explicit OMP setting is kept, the others are filled in.
    assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"], env["PATH"]) == ("7", "4", "/bin")


def test_with_device_keeps_pinning():
    specs = with_device(plan_workers([0, 1], 1, None, cores=2), "CPU")
    assert [(s.env["CUDA_VISIBLE_DEVICES"], s.env["CELERY_BATCHING_DEVICE"], s.device) for s in specs] == [
        ("0", "cpu", "cpu"),
        ("1", "cpu", "cpu"),
    ]


def test_options_table_fits_any_argparse_parser():
    # Given a parser that is not ours (as in a Django management command), When the table is added, Then it parses.
    import argparse

    parser = argparse.ArgumentParser()
    add_options(parser, WORKERS_OPTIONS)
    args = parser.parse_args(["-A", "proj", "--gpus", "0,1", "--per-gpu", "2", "-Q", "a,b"])
    assert (args.app, args.gpus, args.per_gpu, args.queues, args.cpu) == ("proj", [0, 1], 2, ["a", "b"], None)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "celery_batching", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_dry_run_prints_one_pinned_worker_per_slot():
    # Given 4 GPUs x 2, When dry-run, Then 8 commands with distinct names, two per GPU, extras passed through.
    result = _cli("workers", "-A", "proj", "--gpus", "0,1,2,3", "--per-gpu", "2", "--dry-run", "--", "-O", "fair")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 8
    for gpu in range(4):
        pinned = [line for line in lines if f"CUDA_VISIBLE_DEVICES='{gpu}'" in line]
        assert len(pinned) == 2
        assert all("CELERY_BATCHING_DEVICE='cuda:0'" in line and line.endswith("-O fair") for line in pinned)
    assert len({line.split(" -n ")[1].split()[0] for line in lines}) == 8


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gpus", "0,0"], "GPU(s) [0] listed more than once"),
        (["--gpus", "-1"], "GPU indices must be integers >= 0, got -1"),
        (["--gpus", "0,x"], "expected comma-separated GPU indices like 0,1,2, got '0,x'"),
        (["--gpus", "0", "--per-gpu", "0"], "argument --per-gpu: expected a whole number >= 1, got '0'"),
        (["--cpu", "0"], "argument --cpu: expected a whole number >= 1"),
        ([], "give either --gpus (e.g. --gpus 0,1) or --cpu N"),
        (["--gpus", "0", "--cpu", "1"], "give either --gpus"),
        (["--cpu", "1", "--device", "tpu"], "--device='tpu' is not a device"),
        (["--cpu", "1", "-Q", "a,,b"], "expected comma-separated queue names like q1,q2, got 'a,,b'"),
        (["--cpu", "1", "--shutdown-timeout", "-3"], "expected a number of seconds >= 0, got '-3'"),
        (["--cpu", "1", "--loglevel", "loud"], "expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ],
)
def test_workers_rejects_bad_options(args, message):
    result = _cli("workers", "-A", "proj", "--dry-run", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""
