"""Which device and how many CPU threads a worker process uses.

One worker process serves one device. A GPU worker is pinned with
``CUDA_VISIBLE_DEVICES=<index>`` so that it sees exactly one GPU, which it
then calls ``cuda:0``; code that silently defaults to the "current" device
(allocations, kernels, other libraries) therefore lands on the right GPU, and
N workers cannot all pile onto GPU 0. GPU index 0 is an ordinary index
everywhere here (never tested for truth).

Nothing here imports torch at module level: the web server imports this
package too, and thread settings must be in the environment before torch or
numpy is first imported.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field

from ..errors import ConfigurationError

logger = logging.getLogger(__name__)

# Per-process device override; the launcher and worker_configs set it.
DEVICE_ENV = "CELERY_BATCHING_DEVICE"
# Threads per worker process, read by configure_threads().
THREADS_ENV = "CELERY_BATCHING_THREADS"
# CUDA's own device mask; the process sees only the GPUs listed here.
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
# Thread-pool variables read once, when the math libraries load.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
# A device setting: "cpu", "cuda" or "cuda:N".
_DEVICE_RE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def _torch_cuda_device_count() -> int:
    """CUDA devices torch can use here; 0 when torch or CUDA is missing."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def parse_device(value: str, source: str = "device") -> str:
    """Normalize ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; ``"cuda"`` means ``"cuda:0"``."""
    match = _DEVICE_RE.match(value.strip().lower())
    if match is None or (match.group(1) == "cpu" and match.group(2) is not None):
        raise ConfigurationError(
            f"{source}={value!r} is not a device; use 'cpu', 'cuda' or 'cuda:N' "
            f"(N counts the GPUs this process can see, from 0)"
        )
    kind, index = match.groups()
    return "cpu" if kind == "cpu" else f"cuda:{int(index or 0)}"


def resolve_device(
    setting: str | None = None,
    environ: Mapping[str, str] = os.environ,
    *,
    cuda_device_count: Callable[[], int] = _torch_cuda_device_count,
) -> str:
    """The device this worker's model runs on.

    Order: the ``CELERY_BATCHING_DEVICE`` environment variable (set per
    process by the launcher, a systemd unit or ``worker_configs``), then
    ``setting`` (the app's ``batching_device``, shared by all its workers),
    then ``cuda:0`` when ``CUDA_VISIBLE_DEVICES`` names a GPU that torch can
    use, else ``cpu``. A worker never takes a GPU it was not given: with no
    setting and no ``CUDA_VISIBLE_DEVICES`` it runs on the CPU, so workers
    started by hand cannot all land on GPU 0 unnoticed.
    """
    explicit_env = environ.get(DEVICE_ENV, "").strip()
    if explicit_env:
        device = parse_device(explicit_env, DEVICE_ENV)
    elif setting is not None and setting.strip():
        device = parse_device(setting, "batching_device")
    else:
        visible = environ.get(VISIBLE_ENV, "").strip()
        if visible in ("", "-1") or cuda_device_count() == 0:
            return "cpu"
        return "cuda:0"
    if device != "cpu":
        _check_cuda_index(device, environ, cuda_device_count())
    return device


def _check_cuda_index(device: str, environ: Mapping[str, str], count: int) -> None:
    """Fail at startup, not at the first batch, when the GPU asked for is not visible."""
    index = int(device.split(":")[1])
    if index >= count:
        visible = environ.get(VISIBLE_ENV)
        mask = f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "CUDA_VISIBLE_DEVICES unset"
        raise ConfigurationError(
            f"device {device!r} asked for, but this process sees {count} CUDA "
            f"device(s) ({mask}); a GPU pinned with CUDA_VISIBLE_DEVICES=N is "
            f"'cuda:0' inside the process"
        )


def pinning_env(gpu: int | None) -> dict[str, str]:
    """The environment that pins a worker process to one GPU, or to none (CPU)."""
    if gpu is None:
        return {VISIBLE_ENV: "", DEVICE_ENV: "cpu"}
    if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
        raise ConfigurationError(f"GPU index must be an integer >= 0, got {gpu!r}")
    return {VISIBLE_ENV: str(gpu), DEVICE_ENV: "cuda:0"}


def pin_process(gpu: int | None, environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Pin this process to ``gpu`` (or to the CPU) before CUDA starts; return what was set.

    Used by ``worker_configs.gpuN``. Refuses a conflicting mask already in the
    environment and a CUDA context already created, since in both cases the
    worker would silently run on another GPU than the one it was given.
    """
    wanted = pinning_env(gpu)
    current = environ.get(VISIBLE_ENV)
    if current is not None and current.strip() != wanted[VISIBLE_ENV]:
        raise ConfigurationError(
            f"this worker is to be pinned to {'GPU ' + str(gpu) if gpu is not None else 'the CPU'}, "
            f"but CUDA_VISIBLE_DEVICES={current!r} is already set; set one or the other"
        )
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise ConfigurationError(
            "CUDA was initialized before the worker was pinned to its GPU; "
            "pin first (load the worker config before any model touches CUDA)"
        )
    environ.update(wanted)
    return wanted


def configure_threads(
    num_threads: int | None,
    environ: MutableMapping[str, str] = os.environ,
    *,
    override: bool = False,
) -> dict[str, str]:
    """Set the math libraries' thread counts; return the variables it set.

    ``num_threads`` falls back to ``CELERY_BATCHING_THREADS``; with neither,
    nothing is set. A variable the operator already set is kept unless
    ``override``. These variables are read once, when numpy/torch load, so
    call this before importing them; when ``environ`` is this process's
    environment and torch is already loaded, ``torch.set_num_threads`` is
    called as well and a warning says the environment came too late.
    """
    threads = _thread_count(num_threads, environ)
    if threads is None:
        return {}
    applied = {name: str(threads) for name in THREAD_VARS if override or name not in environ}
    environ.update(applied)
    if environ is os.environ and applied:
        _late_thread_fix(threads, "OMP_NUM_THREADS" in applied)
    return applied


def _thread_count(num_threads: int | None, environ: Mapping[str, str]) -> int | None:
    """Validate the thread count, taken from the argument or the environment."""
    if num_threads is None:
        raw = environ.get(THREADS_ENV, "").strip()
        if not raw:
            return None
        try:
            num_threads = int(raw)
        except ValueError:
            raise ConfigurationError(f"{THREADS_ENV}={raw!r} is not a whole number of threads") from None
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ConfigurationError(f"thread count must be an integer >= 1, got {num_threads!r}")
    return num_threads


def _late_thread_fix(threads: int, set_torch: bool) -> None:
    """Warn when numpy/torch loaded before the variables were set; fix torch's pool."""
    loaded = [name for name in ("numpy", "torch") if name in sys.modules]
    if not loaded:
        return
    logger.warning(
        "thread settings came after %s had been imported; its thread pools may "
        "ignore them (call configure_threads before importing the model)",
        " and ".join(loaded),
    )
    if set_torch and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


@dataclass(frozen=True)
class WorkerSpec:
    """One worker process of a launch plan: its node name, device and environment."""

    name: str  # Celery node name; %h is the host name, expanded by Celery
    device: str  # the device as seen inside the process
    gpu: int | None  # the physical GPU index, None for a CPU worker
    threads: int  # CPU threads for this worker's math libraries
    env: Mapping[str, str] = field(default_factory=dict)  # added to the parent's environment


def plan_workers(
    gpus: Sequence[int] | None,
    per_gpu: int = 1,
    cpu: int | None = None,
    *,
    cores: int | None = None,
) -> list[WorkerSpec]:
    """Plan ``per_gpu`` workers on each of ``gpus`` plus ``cpu`` CPU workers.

    Every GPU worker sees only its own GPU (``CUDA_VISIBLE_DEVICES``) and
    calls it ``cuda:0``; CPU workers see none. The machine's ``cores`` are
    split evenly across all planned workers (at least one thread each), so
    N workers do not each start a thread per core.
    """
    gpu_list = list(gpus or [])
    _check_plan(gpu_list, per_gpu, cpu)
    slots: list[tuple[int | None, int]] = [(gpu, i) for gpu in gpu_list for i in range(per_gpu)]
    slots += [(None, i) for i in range(cpu or 0)]
    total_cores = cores if cores is not None else _available_cores()
    threads = max(1, total_cores // len(slots))
    specs = []
    for gpu, i in slots:
        env = pinning_env(gpu)
        env[THREADS_ENV] = str(threads)
        name = f"gpu{gpu}-{i}@%h" if gpu is not None else f"cpu-{i}@%h"
        specs.append(WorkerSpec(name=name, device=env[DEVICE_ENV], gpu=gpu, threads=threads, env=env))
    return specs


def _check_plan(gpus: list[int], per_gpu: int, cpu: int | None) -> None:
    """Reject plans that would double-book or mis-pin a GPU, or start nothing."""
    for gpu in gpus:
        if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
            raise ConfigurationError(f"GPU indices must be integers >= 0, got {gpu!r} in {gpus}")
    duplicates = sorted({gpu for gpu in gpus if gpus.count(gpu) > 1})
    if duplicates:
        raise ConfigurationError(
            f"GPU(s) {duplicates} listed more than once in {gpus}; use --per-gpu for several workers per GPU"
        )
    if isinstance(per_gpu, bool) or not isinstance(per_gpu, int) or per_gpu < 1:
        raise ConfigurationError(f"per_gpu must be an integer >= 1, got {per_gpu!r}")
    if cpu is not None and (isinstance(cpu, bool) or not isinstance(cpu, int) or cpu < 0):
        raise ConfigurationError(f"cpu worker count must be an integer >= 0, got {cpu!r}")
    if not gpus and not cpu:
        raise ConfigurationError("nothing to launch: give GPU indices (--gpus 0,1) or a CPU worker count (--cpu N)")


def _available_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
