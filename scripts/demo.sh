#!/usr/bin/env bash
# The demo in one command: set up (scripts/setup.sh), then start a private
# Redis, a batching worker (all-MiniLM-L6-v2 embeddings, offline; fill-mask
# too when FILL_MASK_CHECKPOINT names a local masked-LM checkpoint) and the
# Django site, print where to open it, send example requests, show the answers.
#
#   bash scripts/demo.sh               # keeps serving until Ctrl-C
#   bash scripts/demo.sh --exit-after  # stops what it started once the examples ran
#
# DEMO_PORT (8000) is the site's port (a busy one is swapped for a free one);
# DEMO_HOST (127.0.0.1) its address. Everything started is stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."

exit_after=0
case "${1:-}" in
    "") ;;
    --exit-after) exit_after=1 ;;
    -h | --help) sed -n '2,12p' "$0" | cut -c3-; exit 0 ;;
    *) echo "demo.sh: unknown option '$1'; the only option is --exit-after" >&2; exit 2 ;;
esac

bash scripts/setup.sh

py=.venv/bin/python
run_dir=$(mktemp -d "${TMPDIR:-/tmp}/celery-batching-demo.XXXXXX")
pids=()

cleanup() {
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
    if ((${#pids[@]})); then echo "==> stopped the demo's processes (${pids[*]}); logs in $run_dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port_is_free() { "$py" -c "import socket; socket.socket().bind(('$1', $2))" 2>/dev/null; }

# wait_for WHAT SECONDS PID COMMAND...: poll COMMAND until it succeeds; fail if PID dies or time runs out.
wait_for() {
    local what=$1 limit=$2 pid=$3
    shift 3
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "demo.sh: $what exited; its log is in $run_dir" >&2
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "demo.sh: timed out after ${limit}s waiting for $what; logs in $run_dir" >&2
            exit 1
        fi
        sleep 0.2
    done
}

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
redis_port=$(free_port)
export REDIS_URL="redis://127.0.0.1:$redis_port/0"
DJANGO_SECRET_KEY=$("$py" -c 'import secrets; print(secrets.token_urlsafe(50))')
export DJANGO_SECRET_KEY DJANGO_ALLOWED_HOSTS="${DJANGO_ALLOWED_HOSTS:-localhost,127.0.0.1}"

echo "==> starting a private redis-server on 127.0.0.1:$redis_port"
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$run_dir" --save "" --appendonly no \
    >"$run_dir/redis.log" 2>&1 &
pids+=($!)
wait_for "redis-server" 10 "${pids[-1]}" redis-cli -p "$redis_port" ping

queues=embed
if [[ -n "${FILL_MASK_CHECKPOINT:-}" ]]; then queues=embed,fill_mask; fi
metrics_port=$(free_port)
echo "==> starting a batching worker for queue(s) $queues (the model loads once, offline)"
CELERY_BATCHING_METRICS_PORT=$metrics_port CELERY_BATCHING_METRICS_ADDR=127.0.0.1 \
    .venv/bin/celery -A django_demo worker -E --pool solo -Q "$queues" -n demo@%h --loglevel INFO \
    >"$run_dir/worker.log" 2>&1 &
pids+=($!)
wait_for "the worker" 300 "${pids[-1]}" grep -q " ready\." "$run_dir/worker.log"

host=${DEMO_HOST:-127.0.0.1}
port=${DEMO_PORT:-8000}
if ! port_is_free "$host" "$port"; then
    busy=$port
    port=$(free_port)
    echo "==> port $busy is busy; using $port"
fi
echo "==> starting the Django site (gunicorn) on $host:$port"
.venv/bin/gunicorn django_demo.wsgi --bind "$host:$port" --workers 1 --threads 16 >"$run_dir/web.log" 2>&1 &
pids+=($!)
site="http://$host:$port"
wait_for "the site to see the worker" 60 "${pids[-1]}" sh -c "curl -fsS '$site/healthz' | grep -q '\"embed\": \\[\"demo@'"

cat <<EOF

==> the demo is running
    open        $site/
    health      $site/healthz
    metrics     http://127.0.0.1:$metrics_port/metrics  (the worker's Prometheus endpoint)
    Flower      REDIS_URL=$REDIS_URL DJANGO_SECRET_KEY=demo .venv/bin/celery -A django_demo flower --port=5555 --basic-auth=admin:demo
    logs        $run_dir
    fill-mask   $(if [[ $queues == *fill_mask* ]]; then echo "on ($FILL_MASK_CHECKPOINT)"; else echo "off: set FILL_MASK_CHECKPOINT=/path/to/bert-base-uncased and run again"; fi)

==> example requests
EOF
status=0
"$py" -m django_demo.examples "$site" || status=$?
if ((status)); then echo "demo.sh: an example request failed; logs in $run_dir" >&2; fi

if ((exit_after)); then
    exit "$status"
fi
echo "==> serving at $site/ until Ctrl-C"
wait -n "${pids[@]}"
echo "demo.sh: a demo process exited; logs in $run_dir" >&2
exit 1
