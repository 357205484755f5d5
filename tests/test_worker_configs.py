"""worker_configs: the shared worker settings and the per-GPU pinning modules."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from celery import Celery

from celery_batching import gather, submit_many
from celery_batching.deploy.devices import _torch_cuda_device_count
from tests.servers import Worker
from worker_configs import layer_onto, settings_of

ROOT = Path(__file__).resolve().parent.parent  # the repository, importable as the cwd
PINNING_VARS = ("CUDA_VISIBLE_DEVICES", "CELERY_BATCHING_DEVICE", "CELERY_BATCHING_THREADS", "OMP_NUM_THREADS")


def _import_in_fresh_process(module: str, **env: str) -> subprocess.CompletedProcess:
    """Import a config module in a clean process and print the pinning it left in the environment."""
    code = f"""
        import os, {module}
        print(" ".join(f"{{k}}={{os.environ.get(k)!r}}" for k in {PINNING_VARS!r}))
    """
    clean = {k: v for k, v in os.environ.items() if k not in PINNING_VARS}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "module, env, printed",
    [
        ("worker_configs.gpu0", {}, "CUDA_VISIBLE_DEVICES='0' CELERY_BATCHING_DEVICE='cuda:0'"),
        ("worker_configs.gpu3", {}, "CUDA_VISIBLE_DEVICES='3' CELERY_BATCHING_DEVICE='cuda:0'"),
        (
            "worker_configs.gpu2",
            {"CUDA_VISIBLE_DEVICES": "2"},
            "CUDA_VISIBLE_DEVICES='2' CELERY_BATCHING_DEVICE='cuda:0'",
        ),
        ("worker_configs.cpu", {}, "CUDA_VISIBLE_DEVICES='' CELERY_BATCHING_DEVICE='cpu'"),
        ("worker_configs.common", {}, "CUDA_VISIBLE_DEVICES=None CELERY_BATCHING_DEVICE=None"),
        (
            "worker_configs.gpu1",
            {"CELERY_BATCHING_THREADS": "3"},
            "CELERY_BATCHING_DEVICE='cuda:0' CELERY_BATCHING_THREADS='3' OMP_NUM_THREADS='3'",
        ),
    ],
)
def test_config_module_pins_the_process(module, env, printed):
    result = _import_in_fresh_process(module, **env)
    assert result.returncode == 0, result.stderr
    assert printed in result.stdout


def test_gpu_config_refuses_a_process_pinned_elsewhere():
    # Given a process already pinned to GPU 1, When it loads GPU 2's config, Then it fails naming both.
    result = _import_in_fresh_process("worker_configs.gpu2", CUDA_VISIBLE_DEVICES="1")
    assert result.returncode == 1
    assert "pinned to GPU 2, but CUDA_VISIBLE_DEVICES='1' is already set" in result.stderr


def test_settings_of_lists_only_celery_settings():
    settings = settings_of("worker_configs.common")
    assert settings["broker_transport_options"] == {"visibility_timeout": 300}
    assert (settings["worker_prefetch_multiplier"], settings["task_acks_late"]) == (1, True)
    assert settings["accept_content"] == ["json"] and settings["worker_send_task_events"] is True
    assert all(name.islower() and not name.startswith("_") for name in settings)


def test_layer_onto_wins_over_config_from_object(monkeypatch):
    # Given an app configured from an object (as Django's is), which makes Celery ignore --config
    app = Celery("layered")
    django_like = {"CELERY_WORKER_PREFETCH_MULTIPLIER": 4, "CELERY_BROKER_URL": "redis://h:1/0"}
    app.config_from_object(django_like, namespace="CELERY")
    monkeypatch.setenv("CELERY_CONFIG_MODULE", "worker_configs.common")
    # When the worker config named by CELERY_CONFIG_MODULE is layered on
    assert layer_onto(app) == "worker_configs.common"
    # Then its settings win and the app's others stay
    assert (app.conf.worker_prefetch_multiplier, app.conf.broker_url) == (1, "redis://h:1/0")


def test_layer_onto_without_a_module_changes_nothing(monkeypatch):
    monkeypatch.delenv("CELERY_CONFIG_MODULE", raising=False)
    app = Celery("untouched")
    assert layer_onto(app) is None
    assert app.conf.worker_prefetch_multiplier == 4


@pytest.mark.slow
def test_cpu_config_through_celery_config_module(redis_url, app_module_env, start_worker):
    # Given a worker started with CELERY_CONFIG_MODULE=worker_configs.cpu (what --config sets)
    env = {"CELERY_CONFIG_MODULE": "worker_configs.cpu"}
    worker = start_worker("tests.apps.device_app", env=env, name="cfg@localhost")
    device_app = importlib.import_module("tests.apps.device_app")
    # When it answers
    answer = gather(submit_many(device_app.probe, [1]), timeout=30)[0]
    # Then it runs on the CPU with no GPU visible, and logs with its node name
    assert (answer["device"], answer["cuda_visible_devices"]) == ("cpu", "")
    assert "INFO/cfg@localhost]" in worker.log()


@pytest.mark.slow
@pytest.mark.skipif(_torch_cuda_device_count() > 0, reason="this machine has a GPU: the worker would start")
def test_gpu_config_on_a_machine_without_that_gpu_stops_the_worker(redis_url):
    # Given no usable GPU, When a worker starts with GPU 1's config, Then it stops with an error saying why.
    worker = Worker("tests.apps.device_app", redis_url, env={"CELERY_CONFIG_MODULE": "worker_configs.gpu1"})
    try:
        with pytest.raises(RuntimeError) as raised:
            worker.start(60)
    finally:
        worker.stop()
    assert "'cuda:0' asked for, but this process sees 0 CUDA device(s) (CUDA_VISIBLE_DEVICES='1')" in str(raised.value)
