"""A test app whose results go to django-celery-results' ``django-db`` backend.

Configures a minimal Django (SQLite file ``CB_DJANGO_DB``), creates the result
tables, then declares a batched task and its ordinary twin; the worker and the
test import it alike. Environment: ``CB_TEST_BROKER``, ``CB_DJANGO_DB``.
"""

from __future__ import annotations

import os

import django
from celery import Celery
from django.conf import settings

from celery_batching import batched

if not settings.configured:
    settings.configure(
        INSTALLED_APPS=["django_celery_results"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["CB_DJANGO_DB"]}},
        USE_TZ=True,
    )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", "django_celery_results", verbosity=0)

app = Celery("django_results", broker=os.environ["CB_TEST_BROKER"], backend="django-db")
app.conf.update(broker_connection_retry_on_startup=True)


def check(sample: int) -> int:
    if sample < 0:
        raise ValueError(f"negative sample {sample}")
    return sample * 2


@batched(app, name="django_results.picky", max_batch_size=16)
def picky(batch: list[int]) -> list[int]:
    return [check(sample) for sample in batch]


@app.task(name="django_results.plain_picky")
def plain_picky(sample: int) -> int:
    return check(sample)
