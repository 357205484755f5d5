"""The anchor systems' server side: run with .venv-anchors' python (see setup_anchors.sh)."""
