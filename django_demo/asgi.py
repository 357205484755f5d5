"""ASGI entry point: ``uvicorn django_demo.asgi:application`` serves /api/async/* without a thread per wait."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_demo.settings")

application = get_asgi_application()
