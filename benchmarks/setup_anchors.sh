#!/usr/bin/env bash
# Creates .venv-anchors: service-streamer and celery-batches (the systems the
# benchmark compares against) in a venv of their own, since celery-batches 0.11
# requires celery<5.7 and the project runs 5.7. Idempotent: a second run only
# checks. Usage: bash benchmarks/setup_anchors.sh
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-anchors
req=benchmarks/anchors/requirements.txt
python=${PYTHON:-python3.11}

if [ ! -x "$venv/bin/python" ]; then
    echo "==> creating $venv with $python"
    "$python" -m venv "$venv"
fi
stamp=$venv/.installed-$(sha1sum "$req" | cut -c1-12)
if [ ! -f "$stamp" ]; then
    echo "==> installing the anchor systems into $venv"
    "$venv/bin/pip" install -q --upgrade pip
    # The CPU build of torch first, so nothing pulls a multi-GB CUDA build.
    "$venv/bin/pip" install -q "torch==2.13.0"
    "$venv/bin/pip" install -q -r "$req"
    rm -f "$venv"/.installed-*
    touch "$stamp"
fi
"$venv/bin/python" -c "import celery_batches, service_streamer, celery, redis; print('anchors ready: celery', celery.__version__, '| redis-py', redis.__version__)"
