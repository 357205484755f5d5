"""Device choice, GPU pinning, thread settings and launch plans, as tables.

service-streamer's known bugs are rows here: GPU 0 dropped because index 0
was tested for truth (#33, #91) and every worker landing on the same GPU
(#53, #74).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from celery_batching.deploy.devices import (
    THREAD_VARS,
    configure_threads,
    parse_device,
    pin_process,
    pinning_env,
    plan_workers,
    resolve_device,
)
from celery_batching.errors import ConfigurationError

NO_GPU = lambda: 0  # noqa: E731  (a machine without CUDA)
ONE_GPU = lambda: 1  # noqa: E731  (a pinned process: one visible GPU)
FOUR_GPUS = lambda: 4  # noqa: E731
ROOT = Path(__file__).resolve().parent.parent  # the repository, importable as the cwd


@pytest.mark.parametrize(
    "setting, environ, count, expected",
    [
        # Given nothing at all, a worker stays on the CPU even when GPUs exist.
        (None, {}, FOUR_GPUS, "cpu"),
        # GPU 0 is a GPU (#33/#91): pinned to 0, the worker uses it.
        (None, {"CUDA_VISIBLE_DEVICES": "0"}, ONE_GPU, "cuda:0"),
        (None, {"CUDA_VISIBLE_DEVICES": "2"}, ONE_GPU, "cuda:0"),
        (None, {"CUDA_VISIBLE_DEVICES": "GPU-5f2c"}, ONE_GPU, "cuda:0"),
        # A mask that hides every GPU, or no CUDA in torch, means CPU.
        (None, {"CUDA_VISIBLE_DEVICES": ""}, FOUR_GPUS, "cpu"),
        (None, {"CUDA_VISIBLE_DEVICES": "-1"}, NO_GPU, "cpu"),
        (None, {"CUDA_VISIBLE_DEVICES": " -1 "}, FOUR_GPUS, "cpu"),
        (None, {"CUDA_VISIBLE_DEVICES": "0"}, NO_GPU, "cpu"),
        # An explicit setting wins over autodetection.
        ("cpu", {"CUDA_VISIBLE_DEVICES": "0"}, ONE_GPU, "cpu"),
        ("cuda", {}, FOUR_GPUS, "cuda:0"),
        ("cuda:0", {}, FOUR_GPUS, "cuda:0"),
        ("CUDA:3", {}, FOUR_GPUS, "cuda:3"),
        (" cuda:1 ", {}, FOUR_GPUS, "cuda:1"),
        ("", {"CUDA_VISIBLE_DEVICES": "1"}, ONE_GPU, "cuda:0"),
        # The per-process environment wins over the app-wide setting.
        ("cuda:3", {"CELERY_BATCHING_DEVICE": "cpu"}, FOUR_GPUS, "cpu"),
        ("cpu", {"CELERY_BATCHING_DEVICE": "cuda:0", "CUDA_VISIBLE_DEVICES": "3"}, ONE_GPU, "cuda:0"),
        ("cuda:1", {"CELERY_BATCHING_DEVICE": ""}, FOUR_GPUS, "cuda:1"),
        # The launcher's CPU rehearsal: pinning visible, device forced to cpu.
        (None, {"CELERY_BATCHING_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": "1"}, NO_GPU, "cpu"),
    ],
)
def test_resolve_device(setting, environ, count, expected):
    assert resolve_device(setting, environ, cuda_device_count=count) == expected


@pytest.mark.parametrize(
    "setting, environ, count, message",
    [
        ("gpu", {}, FOUR_GPUS, "batching_device='gpu' is not a device"),
        ("cuda:", {}, FOUR_GPUS, "is not a device"),
        ("cuda:-1", {}, FOUR_GPUS, "is not a device"),
        ("cuda:x", {}, FOUR_GPUS, "is not a device"),
        ("cpu:0", {}, FOUR_GPUS, "is not a device"),
        (None, {"CELERY_BATCHING_DEVICE": "cuda0"}, FOUR_GPUS, "CELERY_BATCHING_DEVICE='cuda0' is not a device"),
        # All workers on one GPU (#53/#74): a pinned process asked for cuda:2
        # sees only one GPU, so it must not quietly fall back to another one.
        (None, {"CELERY_BATCHING_DEVICE": "cuda:2", "CUDA_VISIBLE_DEVICES": "2"}, ONE_GPU, "'cuda:0' inside"),
        ("cuda:0", {}, NO_GPU, "sees 0 CUDA device(s) (CUDA_VISIBLE_DEVICES unset)"),
        ("cuda:4", {}, FOUR_GPUS, "sees 4 CUDA device(s)"),
    ],
)
def test_resolve_device_rejects(setting, environ, count, message):
    with pytest.raises(ConfigurationError) as raised:
        resolve_device(setting, environ, cuda_device_count=count)
    assert message in str(raised.value)


def test_parse_device_normalizes_cuda_to_index_zero():
    assert parse_device("cuda") == "cuda:0"


@pytest.mark.parametrize(
    "gpu, expected",
    [
        (0, {"CUDA_VISIBLE_DEVICES": "0", "CELERY_BATCHING_DEVICE": "cuda:0"}),
        (3, {"CUDA_VISIBLE_DEVICES": "3", "CELERY_BATCHING_DEVICE": "cuda:0"}),
        (None, {"CUDA_VISIBLE_DEVICES": "", "CELERY_BATCHING_DEVICE": "cpu"}),
    ],
)
def test_pinning_env(gpu, expected):
    assert pinning_env(gpu) == expected


@pytest.mark.parametrize("gpu", [-1, True, "0", 1.0])
def test_pinning_env_rejects_bad_index(gpu):
    with pytest.raises(ConfigurationError, match="GPU index must be an integer >= 0"):
        pinning_env(gpu)


@pytest.mark.parametrize(
    "gpu, environ, expected_env",
    [
        (0, {}, {"CUDA_VISIBLE_DEVICES": "0", "CELERY_BATCHING_DEVICE": "cuda:0"}),
        (2, {"CUDA_VISIBLE_DEVICES": "2"}, {"CUDA_VISIBLE_DEVICES": "2", "CELERY_BATCHING_DEVICE": "cuda:0"}),
        (None, {"CUDA_VISIBLE_DEVICES": ""}, {"CUDA_VISIBLE_DEVICES": "", "CELERY_BATCHING_DEVICE": "cpu"}),
    ],
)
def test_pin_process_sets_the_mask(gpu, environ, expected_env):
    # Given an environment without a conflicting mask, When pinned, Then it holds the pinning.
    pin_process(gpu, environ)
    assert environ == expected_env


@pytest.mark.parametrize(
    "gpu, environ",
    [(2, {"CUDA_VISIBLE_DEVICES": "1"}), (0, {"CUDA_VISIBLE_DEVICES": "0,1"}), (None, {"CUDA_VISIBLE_DEVICES": "0"})],
)
def test_pin_process_refuses_a_conflicting_mask(gpu, environ):
    before = dict(environ)
    with pytest.raises(ConfigurationError, match="is already set; set one or the other"):
        pin_process(gpu, environ)
    assert environ == before


# -- threads ------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_threads, environ, override, expected",
    [
        (None, {}, False, {}),
        (None, {"CELERY_BATCHING_THREADS": " "}, False, {}),
        (4, {}, False, dict.fromkeys(THREAD_VARS, "4")),
        (None, {"CELERY_BATCHING_THREADS": "2"}, False, dict.fromkeys(THREAD_VARS, "2")),
        # The argument wins over the environment variable.
        (3, {"CELERY_BATCHING_THREADS": "2"}, False, dict.fromkeys(THREAD_VARS, "3")),
        # What the operator set explicitly is kept unless told otherwise.
        (
            4,
            {"OMP_NUM_THREADS": "8"},
            False,
            {"MKL_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "4", "NUMEXPR_NUM_THREADS": "4"},
        ),
        (4, {"OMP_NUM_THREADS": "8"}, True, dict.fromkeys(THREAD_VARS, "4")),
    ],
)
def test_configure_threads(num_threads, environ, override, expected):
    given = dict(environ)
    applied = configure_threads(num_threads, environ, override=override)
    assert applied == expected
    assert environ == {**given, **expected}


@pytest.mark.parametrize(
    "num_threads, environ, message",
    [
        (0, {}, "thread count must be an integer >= 1, got 0"),
        (-2, {}, "got -2"),
        (True, {}, "got True"),
        ("4", {}, "got '4'"),
        (None, {"CELERY_BATCHING_THREADS": "four"}, "CELERY_BATCHING_THREADS='four' is not a whole number"),
        (None, {"CELERY_BATCHING_THREADS": "0"}, "got 0"),
    ],
)
def test_configure_threads_rejects(num_threads, environ, message):
    with pytest.raises(ConfigurationError) as raised:
        configure_threads(num_threads, environ)
    assert message in str(raised.value)


def _run_python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS and k != "CELERY_BATCHING_THREADS"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_threads_set_before_torch_import_reach_torch():
    # Given a fresh process, When threads are configured before torch loads, Then torch uses them.
    result = _run_python(
        """
        from celery_batching.deploy.devices import configure_threads
        configure_threads(1)
        import torch
        print(torch.get_num_threads())
        """
    )
    assert result.stdout.strip() == "1"
    assert "came after" not in result.stderr


def test_threads_set_after_torch_import_warn_and_still_apply():
    # Given torch already loaded, When threads are configured, Then a warning says so and torch is adjusted.
    result = _run_python(
        """
        import logging, torch
        logging.basicConfig()
        from celery_batching.deploy.devices import configure_threads
        configure_threads(1)
        print(torch.get_num_threads())
        """
    )
    assert result.stdout.strip() == "1"
    assert "thread settings came after" in result.stderr and "torch had been imported" in result.stderr


# -- launch plans --------------------------------------------------------------


def _summary(specs):
    return [(s.name, s.env["CUDA_VISIBLE_DEVICES"], s.env["CELERY_BATCHING_DEVICE"], s.threads) for s in specs]


@pytest.mark.parametrize(
    "gpus, per_gpu, cpu, cores, expected",
    [
        # GPU 0 alone is a real plan (#33/#91), pinned to "0".
        ([0], 1, None, 8, [("gpu0-0@%h", "0", "cuda:0", 8)]),
        (
            [0, 1, 2, 3],
            2,
            None,
            16,
            [(f"gpu{g}-{i}@%h", str(g), "cuda:0", 2) for g in range(4) for i in range(2)],
        ),
        ([3, 1], 1, None, 4, [("gpu3-0@%h", "3", "cuda:0", 2), ("gpu1-0@%h", "1", "cuda:0", 2)]),
        (None, 1, 2, 2, [("cpu-0@%h", "", "cpu", 1), ("cpu-1@%h", "", "cpu", 1)]),
        ([], 1, 3, 12, [("cpu-0@%h", "", "cpu", 4), ("cpu-1@%h", "", "cpu", 4), ("cpu-2@%h", "", "cpu", 4)]),
        # More workers than cores: still one thread each.
        (None, 1, 4, 2, [(f"cpu-{i}@%h", "", "cpu", 1) for i in range(4)]),
        ([0], 1, 1, 4, [("gpu0-0@%h", "0", "cuda:0", 2), ("cpu-0@%h", "", "cpu", 2)]),
    ],
)
def test_plan_workers(gpus, per_gpu, cpu, cores, expected):
    specs = plan_workers(gpus, per_gpu, cpu, cores=cores)
    assert _summary(specs) == expected
    assert len({s.name for s in specs}) == len(specs)
    assert all(s.env["CELERY_BATCHING_THREADS"] == str(s.threads) for s in specs)


def test_plan_pins_each_gpu_worker_to_its_own_gpu():
    # Given 4 GPUs x 2 workers, Then each GPU has exactly two workers and each worker sees one GPU (#53/#74).
    specs = plan_workers([0, 1, 2, 3], 2, None, cores=8)
    per_gpu = {}
    for spec in specs:
        per_gpu.setdefault(spec.env["CUDA_VISIBLE_DEVICES"], []).append(spec.gpu)
    assert per_gpu == {"0": [0, 0], "1": [1, 1], "2": [2, 2], "3": [3, 3]}


@pytest.mark.parametrize(
    "gpus, per_gpu, cpu, message",
    [
        ([0, 1, 0], 1, None, "GPU(s) [0] listed more than once"),
        ([-1], 1, None, "GPU indices must be integers >= 0, got -1"),
        ([True], 1, None, "got True"),
        ([0], 0, None, "per_gpu must be an integer >= 1, got 0"),
        ([0], -1, None, "per_gpu must be an integer >= 1"),
        (None, 1, -1, "cpu worker count must be an integer >= 0, got -1"),
        (None, 1, None, "nothing to launch"),
        ([], 1, 0, "nothing to launch"),
    ],
)
def test_plan_workers_rejects(gpus, per_gpu, cpu, message):
    with pytest.raises(ConfigurationError) as raised:
        plan_workers(gpus, per_gpu, cpu, cores=4)
    assert message in str(raised.value)
