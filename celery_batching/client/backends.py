"""Which result backends batched tasks work with, checked before anything is sent or served.

The Redis backend gets the fast paths (results written one pipeline per batch,
awaited on one reply channel per process); any other backend that stores
results (a database, django-celery-results, ...) goes through Celery's own
``store_result`` and ``AsyncResult`` polling. ``rpc://`` is refused: it stores
nothing, it sends each result as a message to the one client that sent the
task (its reply queue and correlation id), so the result is not readable from
anywhere else (another web process, Flower, a retry of ``get``), and a batch
writer has no per-task request to address it with. Refusing it at declaration
and at worker start names the fix instead of failing at the first ``.delay()``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.app.backends import by_url
from celery.backends.rpc import RPCBackend
from celery.exceptions import ImproperlyConfigured

from ..errors import ConfigurationError


def result_backend_class(app: Celery) -> type | None:
    """The class of ``app``'s result backend, without building it (``None`` if Celery cannot load it).

    A backend Celery cannot load is left for Celery to report where it always does.
    """
    backend: Any = app.backend_cls or app.conf.result_backend  # a class, or its URL or alias
    if isinstance(backend, type):
        return backend
    try:
        cls: type = by_url(backend, app.loader)[0]  # type: ignore[index]  # it returns (class, url)
        return cls
    except (ImportError, ImproperlyConfigured):
        return None


def check_result_backend(app: Celery, what: str, backend: Any = None) -> None:
    """Raise :class:`ConfigurationError` if ``app``'s result backend cannot carry batched results.

    With ``backend`` (an instance), its class is checked: no configuration is read again.
    """
    cls = type(backend) if backend is not None else result_backend_class(app)
    if cls is not None and issubclass(cls, RPCBackend):
        raise ConfigurationError(
            f"{what}: the rpc:// result backend is not supported by celery-batching (it sends each result "
            f"to the sending client's reply queue and stores nothing); set result_backend to a Redis URL "
            f"(redis://host:6379/1, the fast path) or another storing backend (db+sqlite:///results.db, "
            f"django-db)"
        )
