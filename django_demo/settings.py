"""Settings of the demo site, all read from the environment.

The same settings module configures the web server, the Celery workers and
Flower (through ``CELERY_*``), so one set of variables describes a deployment:

- ``REDIS_URL``: broker and result backend (``redis://127.0.0.1:6379/0``).
- ``DJANGO_SECRET_KEY``: required unless ``DJANGO_DEBUG=1``.
- ``DJANGO_DEBUG``: ``1`` for development only; off by default.
- ``DJANGO_ALLOWED_HOSTS``: comma-separated host names (``localhost,127.0.0.1,[::1]``).
- ``FILL_MASK_CHECKPOINT``: a local masked-LM directory (e.g. bert-base-uncased);
  unset, the fill-mask endpoint explains how to set it.
- ``DEMO_*``: request limits, waits and the queue bound, below.
- ``DEMO_RESULT_BACKEND``: ``redis`` (default: results in Redis, the fast path) or
  ``django-db`` (django-celery-results: results in the database named by
  ``DEMO_RESULTS_DB``, a SQLite file, ``results.sqlite3`` by default; run
  ``python manage.py migrate django_celery_results`` once). Batched tasks then
  send and wait through Celery's own path.
- ``INFERENCE_NAIVE``: ``1`` turns on ``/api/naive/embed``, where the web
  process runs the model itself, one text per call: the baseline the
  benchmark's HTTP workload compares with. Off by default.
"""

import os

from django.core.exceptions import ImproperlyConfigured


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={raw!r}: use 1/0, true/false, yes/no or on/off")


def env_number(name: str, default: float, kind: type = float, minimum: float = 0) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a{'n integer' if kind is int else ' number'}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={raw} must be at least {minimum}")
    return value


DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set; set it to a long random string "
            "(python -c 'import secrets; print(secrets.token_urlsafe(50))'), or DJANGO_DEBUG=1 for development"
        )
    SECRET_KEY = "insecure-development-key-only-for-DJANGO_DEBUG"
ALLOWED_HOSTS = [
    h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h.strip()
]

INSTALLED_APPS = ["django_demo.inference"]
# No sessions, cookies or forms: the API is JSON in, JSON out, and nothing is stored.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "django_demo.urls"
WSGI_APPLICATION = "django_demo.wsgi.application"
ASGI_APPLICATION = "django_demo.asgi.application"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True, "OPTIONS": {}}]
DATABASES: dict = {}
USE_TZ = True
# The server's clock zone, in its logs too: UTC, whatever the host says.
TIME_ZONE = "UTC"
SECURE_CONTENT_TYPE_NOSNIFF = True

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
RESULT_BACKEND_CHOICE = os.environ.get("DEMO_RESULT_BACKEND", "redis").strip() or "redis"
if RESULT_BACKEND_CHOICE == "django-db":
    INSTALLED_APPS.append("django_celery_results")
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("DEMO_RESULTS_DB", "results.sqlite3"),
        }
    }
    CELERY_RESULT_BACKEND = "django-db"
elif RESULT_BACKEND_CHOICE != "redis":
    raise ImproperlyConfigured(f"DEMO_RESULT_BACKEND={RESULT_BACKEND_CHOICE!r}: use redis or django-db")
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Results are read once by the waiting view; keep them an hour for Flower and debugging.
CELERY_RESULT_EXPIRES = 3600
# Flower shows tasks from the moment they are sent, not only once a worker has them.
CELERY_TASK_SEND_SENT_EVENT = True

# A masked-LM checkpoint directory for /api/fill-mask; empty turns the endpoint off with a how-to.
FILL_MASK_CHECKPOINT = os.environ.get("FILL_MASK_CHECKPOINT", "").strip()
# Texts per request and characters per text accepted by the API.
DEMO_MAX_TEXTS = int(env_number("DEMO_MAX_TEXTS", 32, int, minimum=1))
DEMO_MAX_TEXT_CHARS = int(env_number("DEMO_MAX_TEXT_CHARS", 1000, int, minimum=1))
# Seconds a view waits for its results before answering 504 and revoking the tasks.
DEMO_RESULT_TIMEOUT = env_number("DEMO_RESULT_TIMEOUT", 10.0)
# Samples that may wait on each batched queue; past it a request answers 503 at once (0: no bound).
# Choose about the workers' rate (samples/s) times DEMO_RESULT_TIMEOUT: a sample admitted then is served in time.
DEMO_MAX_QUEUE_DEPTH = int(env_number("DEMO_MAX_QUEUE_DEPTH", 2000, int))
# Seconds a 503 answer tells the client to wait before trying again (Retry-After).
DEMO_RETRY_AFTER = int(env_number("DEMO_RETRY_AFTER", 1, int))
# How often (seconds) each web process asks the workers which queues they consume,
# how long it waits for their replies, and for how long a reply counts as alive.
DEMO_WORKER_POLL_INTERVAL = env_number("DEMO_WORKER_POLL_INTERVAL", 2.0, minimum=1.0)
DEMO_WORKER_REPLY_TIMEOUT = env_number("DEMO_WORKER_REPLY_TIMEOUT", 0.5)
DEMO_WORKER_GRACE = env_number("DEMO_WORKER_GRACE", 6.0)
# /api/naive/embed: MiniLM loaded in each web process on first use, run per request (a baseline, not a feature).
INFERENCE_NAIVE = env_bool("INFERENCE_NAIVE", False)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"utc": {"()": "django_demo.log_format.UTCFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "utc"}},
    "root": {"handlers": ["console"], "level": os.environ.get("DJANGO_LOG_LEVEL", "INFO")},
}
