"""Celery apps the benchmark's workers and clients import (``celery -A benchmarks.apps.X``)."""
