"""WSGI entry point: ``gunicorn django_demo.wsgi`` serves the blocking views."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_demo.settings")

application = get_wsgi_application()
