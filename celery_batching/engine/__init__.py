"""The batching engine: when to flush, running ``predict``, splitting outcomes.

No Celery, no Redis, no torch: the worker's consumer and the in-process
streamer both feed it.
"""
