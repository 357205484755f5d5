"""The settings the fast send path reads, read again only when the app's configuration changes.

One Celery setting read costs about 8 µs here: each name is tried under its
prefixed and old spellings in every layer of the configuration, and each miss
is a ``KeyError``. The fast path read seven per call, a fifth of its Python time.
They are read again whenever ``app.conf`` is replaced (``config_from_object``)
or changed through it (``app.conf.x = y``, ``app.conf.update``), which is how
Celery's settings change at run time; like the settings Celery binds to each
task class (``serializer``, ``priority``, ...), a change made to the source
object behind ``app.conf`` (a Django settings module) is not seen until then.
``task_always_eager`` is not kept here: it is read on every call, as Celery
does, since tests switch it in all of those ways.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from celery import Celery

#: The app setting that turns the fast path off.
FAST_CLIENT_SETTING = "batching_fast_client"


@dataclass(frozen=True, slots=True)
class SendSettings:
    """What the fast path needs from the configuration for one call."""

    fast_client: bool
    default_priority: int | None
    compression: str | None
    send_sent_event: bool
    #: ``task_repr_maxlevels`` (Celery 5.7; before it, saferepr's default), for the ``argsrepr`` header.
    repr_maxlevels: int


@dataclass(frozen=True, slots=True)
class _Read:
    """Settings as read from one configuration, with what tells it has not changed since."""

    conf: Any
    layers: int
    changes: dict[str, Any]
    settings: SendSettings


_read: weakref.WeakKeyDictionary[Celery, _Read] = weakref.WeakKeyDictionary()


def send_settings(app: Celery) -> SendSettings:
    """``app``'s settings for the fast path, read again if its configuration changed since."""
    conf = app.conf
    layers, changes = len(conf.maps or ()), conf.changes or {}
    last = _read.get(app)
    if last is None or last.conf is not conf or last.layers != layers or last.changes != changes:
        last = _read[app] = _Read(
            conf=conf,
            layers=layers,
            changes=dict(changes),
            settings=SendSettings(
                fast_client=bool(conf.get(FAST_CLIENT_SETTING, True)),
                default_priority=conf.task_default_priority,
                compression=conf.task_compression,
                send_sent_event=bool(conf.task_send_sent_event),
                repr_maxlevels=int(conf.get("task_repr_maxlevels", 3)),
            ),
        )
    return last.settings
