"""Celery worker settings for celery-batching workers, one module per worker kind.

``common`` holds what every worker shares; ``gpu0`` … ``gpu3`` and ``cpu``
add the device pinning. Celery reads one of them with
``celery -A proj --config worker_configs.gpu0 worker`` (or the
``CELERY_CONFIG_MODULE`` environment variable) for an app that does not call
``config_from_object``; an app that does (Django's) layers the module on top
with :func:`layer_onto`.
"""

from __future__ import annotations

import importlib
import os
import types
from typing import Any

from celery import Celery

# Where Celery's own --config option puts the module name.
CONFIG_MODULE_ENV = "CELERY_CONFIG_MODULE"


def settings_of(module_name: str) -> dict[str, Any]:
    """The Celery settings a config module defines (its public lower-case names)."""
    module = importlib.import_module(module_name)
    return {
        name: value
        for name, value in vars(module).items()
        if name.islower() and not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def layer_onto(app: Celery, module_name: str | None = None) -> str | None:
    """Apply a worker config module over an app's own configuration; return its name.

    For apps that call ``config_from_object`` (which makes Celery ignore
    ``--config``). The module defaults to ``CELERY_CONFIG_MODULE``; with
    neither, nothing happens. Its values win over the app's settings.
    """
    module_name = module_name or os.environ.get(CONFIG_MODULE_ENV) or None
    if module_name:
        app.conf.update(settings_of(module_name))
    return module_name
