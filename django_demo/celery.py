"""The demo's Celery app, configured from Django settings (``CELERY_*``).

Workers and Flower start it with ``celery -A django_demo ...``; the web
server imports it through the package. Task modules of installed apps
(``inference/tasks.py``) are found by ``autodiscover_tasks``.
"""

import os

from celery import Celery

from worker_configs import layer_onto

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_demo.settings")

app = Celery("django_demo")
app.config_from_object("django.conf:settings", namespace="CELERY")
# config_from_object makes Celery ignore --config; a worker's CELERY_CONFIG_MODULE
# (worker_configs.common, .gpuN) is layered on here instead.
layer_onto(app)
app.autodiscover_tasks()
