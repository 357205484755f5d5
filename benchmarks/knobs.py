"""Knobs shared by every system, so all run with the same settings where they exist."""

# Largest batch a worker runs (service-streamer's batch_size, celery-batches' flush_every).
BATCH_SIZE = 64
# The anchors' batching window in seconds (service-streamer's max_latency,
# celery-batches' flush_interval). Ours runs at its default max_wait=0.
ANCHOR_MAX_WAIT = 0.1
# celery-batches needs prefetch above flush_every, or a batch never fills (its docs).
BATCHES_PREFETCH_MULTIPLIER = 2 * BATCH_SIZE
# Prefix of the service-streamer RedisStreamer's queue and reply channels.
STREAMER_PREFIX = "bench"

# Environment the harness hands to clients and workers.
REDIS_ENV = "BENCH_REDIS_URL"  # redis://127.0.0.1:PORT (no db)
MODEL_ENV = "BENCH_MODEL"  # noop, simgpu or minilm
DEVICE_ENV = "BENCH_DEVICE"  # cpu or cuda:0
