"""The ``celery-batching workers`` launcher: its restart rule as a table, its
command line, and (marked slow) the real thing: worker processes against a
real redis-server, killed and restarted, stopped with SIGTERM.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from celery_batching import gather, submit_many
from celery_batching.deploy.cli import WORKERS_OPTIONS, add_options
from celery_batching.deploy.devices import plan_workers
from celery_batching.deploy.launcher import (
    RestartPolicy,
    describe_exit,
    restart_delay,
    with_device,
    worker_command,
    worker_env,
)
from celery_batching.errors import ConfigurationError
from tests.servers import wait_until

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


@pytest.mark.parametrize(
    "returncode, text",
    [
        (0, "exited with code 0"),
        (1, "exited with code 1"),
        (-9, "was killed by SIGKILL"),
        (-15, "was killed by SIGTERM"),
    ],
)
def test_describe_exit(returncode, text):
    assert describe_exit(returncode) == text


# -- the real launcher: worker processes against a real redis-server -------------

READY = re.compile(r"\] (\S+@\S+) ready\.")  # Celery's "node ready." log line
STARTED = re.compile(r"started worker (\S+) pid (\d+)")  # the launcher's log line


class Launcher:
    """``python -m celery_batching workers -A tests.apps.device_app ...`` as a subprocess."""

    def __init__(self, broker_url: str, args: Sequence[str], tmp_path: Path) -> None:
        self.log_path = tmp_path / "launcher.log"
        env = {
            **os.environ,
            "CB_TEST_BROKER": broker_url,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }
        argv = [sys.executable, "-m", "celery_batching", "workers", "-A", "tests.apps.device_app"]
        argv += [*args, "--shutdown-timeout", "30", "--", "--without-mingle", "--without-gossip"]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def started(self) -> list[tuple[str, int]]:
        """(node name, pid) of every worker process the launcher started, in order."""
        return [(name, int(pid)) for name, pid in STARTED.findall(self.log())]

    def wait_ready(self, count: int, timeout: float = 90) -> list[str]:
        """Wait until ``count`` "ready." lines were logged; return their node names."""

        def ready() -> list[str] | None:
            assert self.process.poll() is None, f"launcher exited early:\n{self.log()}"
            nodes = READY.findall(self.log())
            return nodes if len(nodes) >= count else None

        return wait_until(ready, timeout, f"{count} workers ready; log:\n{self.log_path}")

    def stop(self) -> None:
        """Teardown: SIGTERM, and if that fails, kill it and the workers it logged."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for _, pid in self.started():
            if _alive(pid) and b"device_app" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, already dead, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.fixture
def launch(redis_url, app_module_env, tmp_path):
    """Start the launcher with extra options; stopped after the test."""
    started: list[Launcher] = []

    def start(*args: str) -> Launcher:
        launcher = Launcher(redis_url, args, tmp_path)
        started.append(launcher)
        return launcher

    yield start
    for launcher in started:
        launcher.stop()


@pytest.fixture
def device_app(app_module_env):
    return importlib.import_module("tests.apps.device_app")


def _answers_from_every_node(device_app, nodes: set[str], timeout: float = 60) -> dict[str, dict]:
    """Send probes until every node in ``nodes`` answered; return one answer per node."""
    seen: dict[str, dict] = {}

    def all_answered() -> bool:
        for answer in gather(submit_many(device_app.probe, range(2 * len(nodes))), timeout=30):
            seen.setdefault(answer["node"], answer)
        return set(seen) >= nodes

    wait_until(all_answered, timeout, f"answers from {sorted(nodes)}; got {sorted(seen)}")
    return seen


@pytest.mark.slow
def test_cpu_workers_each_report_the_device_they_were_given(launch, device_app):
    # Given the launcher with two CPU workers and the shared worker settings
    launcher = launch("--cpu", "2", "--config", "worker_configs.common")
    nodes = set(launcher.wait_ready(2))
    # When probes are sent until both workers answered
    answers = _answers_from_every_node(device_app, nodes)
    # Then each is a distinct cpu-N node on the CPU, no GPU visible, threads split between them
    assert {name.split("@")[0] for name in answers} == {"cpu-0", "cpu-1"}
    assert len({answer["pid"] for answer in answers.values()}) == 2
    for answer in answers.values():
        assert (answer["device"], answer["cuda_visible_devices"]) == ("cpu", "")
        assert answer["omp_num_threads"] == answer["batching_threads"]
    # And the workers' log lines carry their node names (worker_configs.common's format)
    assert all(f"INFO/{node}]" in launcher.log() for node in nodes)


@pytest.mark.slow
def test_gpu_plan_pins_each_worker_to_its_gpu(launch, device_app):
    # Given a two-GPU plan rehearsed on the CPU (--device cpu keeps the pinning)
    launcher = launch("--gpus", "0,1", "--device", "cpu")
    nodes = set(launcher.wait_ready(2))
    # When both workers answered
    answers = _answers_from_every_node(device_app, nodes)
    # Then the worker named after GPU N sees exactly GPU N (GPU 0 included) and uses the forced device
    pinned = {name.split("@")[0]: answer["cuda_visible_devices"] for name, answer in answers.items()}
    assert pinned == {"gpu0-0": "0", "gpu1-0": "1"}
    assert {answer["device"] for answer in answers.values()} == {"cpu"}


@pytest.mark.slow
def test_killed_worker_is_restarted_and_sigterm_stops_everything(launch, device_app):
    # Given two CPU workers
    launcher = launch("--cpu", "2")
    launcher.wait_ready(2)
    victim_name, victim_pid = launcher.started()[0]
    # When one of them is killed with SIGKILL
    os.kill(victim_pid, signal.SIGKILL)
    # Then the launcher starts a new process under the same node name, which serves again
    wait_until(lambda: len(launcher.started()) == 3, 60, f"a restart; log:\n{launcher.log_path}")
    restarted_name, restarted_pid = launcher.started()[2]
    assert (restarted_name, restarted_pid != victim_pid) == (victim_name, True)
    assert f"(pid {victim_pid}) was killed by SIGKILL; restarting in" in launcher.log()
    host = launcher.wait_ready(3)[0].split("@", 1)[1]
    victim_node = victim_name.replace("%h", host)
    assert _answers_from_every_node(device_app, {victim_node})[victim_node]["pid"] == restarted_pid
    # When the launcher gets SIGTERM
    children = [pid for _, pid in launcher.started()[1:]]
    launcher.process.send_signal(signal.SIGTERM)
    # Then it stops every worker and exits 0
    assert launcher.process.wait(60) == 0
    assert not [pid for pid in children if _alive(pid)]
    assert "all workers stopped" in launcher.log()
