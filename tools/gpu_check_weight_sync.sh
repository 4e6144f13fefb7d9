#!/usr/bin/env bash
# The weight-sync benchmark on a GPU node (3+ GPUs: 2 learner ranks + 1 vLLM engine): blob vs NCCL stream, bf16.
# Usage: tools/gpu_check_weight_sync.sh [MODEL_DIR ...]   (default: the 0.5B random model the CPU run uses)
# Prints the same table as the CPU run and writes outputs/bench/weight_sync_gpu/weight_sync.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c "import torch, sys; n = torch.cuda.device_count(); sys.exit(0 if n >= 3 else f'need 3 GPUs, found {n}')"
exec "$PY" -m benchmarks.weight_sync --gpu --sizes "${@:-0p5b}" --out outputs/bench/weight_sync_gpu
