"""Worker settings for a CPU worker: the shared settings, no GPU visible."""

from celery_batching.deploy.devices import pin_process as _pin_process
from worker_configs.common import *  # noqa: F403

_pin_process(None)
