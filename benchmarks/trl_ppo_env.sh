#!/usr/bin/env bash
# Creates or updates .venv-trl-ppo, the virtual environment of bench_trl.py's full-PPO row (make bench-trl-ppo-env).
#
# TRL 1.16 has no PPOTrainer (deleted in 2026-09, huggingface/trl#7020); 1.12.0 is the last release with
# trl.experimental.ppo (benchmarks/bench_trl_ppo.py's docstring says which releases were tried). torch goes in
# first, pinned (the CPU wheel; otherwise pip pulls a CUDA build), then the pinned TRL and the transformers,
# accelerate and datasets it was measured with. Idempotent: a venv that already has these versions is left as
# it is. Prints the versions. Override with PYTHON, TRL_PPO_VENV, TORCH_VERSION, TRL_PPO_VERSION.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${TRL_PPO_VENV:-.venv-trl-ppo}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TRL_PPO_VERSION=${TRL_PPO_VERSION:-1.12.0}
PINS=("trl==${TRL_PPO_VERSION}" "transformers==5.24.0" "accelerate==1.15.0" "datasets==5.2.0")
PY="$VENV/bin/python"
STAMP="$VENV/.installed"
WANT="torch==${TORCH_VERSION} ${PINS[*]}"

[ -x "$PY" ] || "$PYTHON" -m venv "$VENV"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    "$PY" -m pip install -q --upgrade pip
    "$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '${TORCH_VERSION}')" 2>/dev/null \
        || "$PY" -m pip install -q "torch==${TORCH_VERSION}"
    "$PY" -m pip install -q "torch==${TORCH_VERSION}" "${PINS[@]}"  # torch named again: kept, never upgraded
    echo "$WANT" > "$STAMP"
fi
"$PY" - <<'EOF'
import sys
from importlib.metadata import version

names = ("torch", "trl", "transformers", "accelerate", "datasets")
print(f"{sys.prefix}: " + ", ".join(f"{name} {version(name)}" for name in names))
EOF
