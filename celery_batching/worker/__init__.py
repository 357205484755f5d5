"""What a worker process runs: the bootstep and, per batched queue, its consumer.

``bootstep.py`` plugs into ``celery worker``; ``consumer.py`` runs the fetch,
predict and write threads; ``claim.py`` (with ``lua/``) claims and acknowledges
messages in Redis; ``results.py`` stores outcomes; ``events.py`` sends task
events; ``metrics.py`` exports Prometheus metrics; ``control.py`` answers
remote-control commands.
"""
