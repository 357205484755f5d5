"""``python -m celery_batching``: the ``celery-batching`` command."""

from .cli import main

raise SystemExit(main())
