"""A Django site that serves models through batched Celery tasks.

The Celery app is imported here, as Celery's Django guide does, so that
``@shared_task`` and ``celery -A django_demo`` find it when Django starts.
"""

from .celery import app as celery_app

__all__ = ["celery_app"]
