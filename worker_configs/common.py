"""Settings every celery-batching worker shares.

Imported (directly or through ``gpuN``/``cpu``) when the worker loads its
configuration, which is before the model is built; the thread variables are
therefore set before the model's ``init_model`` imports torch or numpy (if the
app module imported them earlier, a warning says so and torch is adjusted).
"""

import logging as _logging
import socket as _socket

from celery import signals as _signals

from celery_batching.deploy.devices import configure_threads as _configure_threads

# CELERY_BATCHING_THREADS (set per worker by the launcher) -> OMP/MKL/OpenBLAS/numexpr.
_configure_threads(None)

# Redis gives a claimed but unacknowledged message back to the queue after
# this many seconds; that is how a task survives kill -9 of its worker. A
# healthy worker holds a message for at most two batches (the one running and
# the one claimed next), i.e. milliseconds to seconds for inference, so 300 s
# is far from a false re-delivery while a crashed worker's tasks come back
# within 5 minutes (kombu's default, 3600 s, would leave callers waiting an
# hour). Raise it if one predict(batch) can take minutes, and do not use
# ETA/countdown tasks longer than it on this broker.
broker_transport_options = {"visibility_timeout": 300}
# A worker started before Redis keeps retrying instead of exiting.
broker_connection_retry_on_startup = True

# Claim no more than the batch consumer asks for, so idle workers on the same
# queue get work (no hoarding), and acknowledge a task only after its result
# is stored (at-least-once).
worker_prefetch_multiplier = 1
task_acks_late = True

# JSON only: a worker never unpickles what a web request put on the queue.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# Per-task events so Flower shows every task of a batch (sent, received, started, done).
worker_send_task_events = True
task_send_sent_event = True

# Log lines carry the node name (gpu0-1@host), so the interleaved output of
# several workers on one terminal or journal can be told apart.
worker_log_format = "[%(asctime)s: %(levelname)s/%(node)s] %(message)s"
worker_task_log_format = "[%(asctime)s: %(levelname)s/%(node)s] %(task_name)s[%(task_id)s]: %(message)s"

_node = {"name": _socket.gethostname()}  # the worker's node name once Celery knows it
_make_record = _logging.getLogRecordFactory()


def _record_with_node(*args, **kwargs):
    """Every log record gets ``node``, so the format above never fails."""
    record = _make_record(*args, **kwargs)
    record.node = _node["name"]
    return record


@_signals.celeryd_init.connect
def _remember_node(sender=None, **kwargs):
    """celeryd_init runs before logging is set up and names the node (``-n``)."""
    _node["name"] = sender


_logging.setLogRecordFactory(_record_with_node)
