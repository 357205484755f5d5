"""``python -m celery_batching``: the ``celery-batching`` command."""

from .deploy.cli import main

raise SystemExit(main())
