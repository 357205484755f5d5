# One image for every service of docker-compose.yml: the Django site, the
# batching workers (one per GPU) and Flower. Models load offline: MiniLM
# ships in a Python package; a fill-mask checkpoint is mounted at /checkpoints.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORKDIR /app

# torch first and pinned: PyPI's Linux x86_64 build carries CUDA, for the GPU workers.
RUN pip install "torch==2.13.0"
COPY pyproject.toml README.md LICENSE ./
COPY celery_batching ./celery_batching
# Extras named here must exist in pyproject.toml (tests/test_packaging.py checks);
# the Prometheus exporter is a core dependency, so it needs none.
RUN pip install ".[models,django]"
COPY django_demo ./django_demo
COPY worker_configs ./worker_configs
COPY manage.py ./

RUN useradd --create-home --uid 1000 app
USER app
EXPOSE 8000 5555 9100
