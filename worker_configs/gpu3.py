"""Worker settings for a worker on GPU 3: the shared settings, pinned to GPU 3.

Inside the process the GPU is ``cuda:0`` (CUDA_VISIBLE_DEVICES=3).
"""

from celery_batching.deploy.devices import pin_process as _pin_process
from worker_configs.common import *  # noqa: F403

_pin_process(3)
