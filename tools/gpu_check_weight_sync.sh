#!/usr/bin/env bash
# The weight-sync benchmark on a GPU node, bf16, printing the same table as the CPU run:
#   1. separate GPUs (3+: 2 learner ranks + 1 vLLM engine): blob against the NCCL stream;
#   2. colocated (2+: an engine on each learner rank's GPU, resources.colocate): blob against CUDA IPC
#      (rollout.weight_sync=ipc, what `auto` picks there).
# Usage: tools/gpu_check_weight_sync.sh [MODEL_DIR ...]   (default: the 0.5B random model the CPU run uses)
# Writes outputs/bench/weight_sync_gpu/weight_sync.json and outputs/bench/weight_sync_gpu_colocated/weight_sync.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
n=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$n" -lt 2 ]; then echo "need 2 GPUs (3 for the NCCL run), found $n" >&2; exit 1; fi
if [ "$n" -ge 3 ]; then
  "$PY" -m benchmarks.weight_sync --gpu --sizes "${@:-0p5b}" --stream-only --out outputs/bench/weight_sync_gpu
else
  echo "only $n GPUs: skipping the NCCL run (it needs 3)" >&2
fi
exec "$PY" -m benchmarks.weight_sync --gpu --colocate --sizes "${@:-0p5b}" --stream-only \
  --out outputs/bench/weight_sync_gpu_colocated
