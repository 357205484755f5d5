"""Models for batched tasks: the :class:`~celery_batching.models.base.ManagedModel`
contract, and bundled models (the ``models`` extra: torch, transformers).

Import the classes from their modules, e.g.
``from celery_batching.models.embeddings import MiniLMEmbedder``. Importing
them is cheap: torch and transformers load only when a worker calls
``init_model()``, so a web process can declare the task without them.
"""
