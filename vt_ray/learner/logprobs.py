"""Per-token log-probs (and entropy) of the response tokens of a batch under a model: the one forward the
learner's log-prob pass, update and SFT share."""

from __future__ import annotations

import torch

from vt_ray.learner.batch import TrainBatch


def _response_logits(model: torch.nn.Module, batch: TrainBatch, device: torch.device) -> tuple[torch.Tensor, int]:
    """[B, L-start-1, vocab] float32 logits predicting tokens start+1 .. L-1, and ``start``.

    Logits are computed only from the first response position on: the prompt is mostly video tokens, and
    the [B, L, vocab] float32 logits are the largest activation of the step.
    """
    start = max(batch.first_response_position() - 1, 0)
    length = batch.input_ids.shape[1]
    out = model(**batch.model_inputs(device), use_cache=False, logits_to_keep=length - start)
    return out.logits[:, :-1].float(), start


def _on_responses(values: torch.Tensor, start: int, batch: TrainBatch, device: torch.device) -> torch.Tensor:
    """Per-token values aligned with ``batch.input_ids`` ([B, L]), 0 off the response tokens, so results do
    not depend on how samples were batched."""
    full = torch.nn.functional.pad(values, (start + 1, 0))
    return torch.where(batch.response_mask.to(device).bool(), full, torch.zeros_like(full))


def token_logprobs(model: torch.nn.Module, batch: TrainBatch, device: torch.device) -> torch.Tensor:
    """[B, L] log p(token t | tokens < t) under ``model`` on response tokens; 0 elsewhere."""
    return token_logprobs_and_entropy(model, batch, device, entropy=None)[0]


def token_logprobs_and_entropy(
    model: torch.nn.Module, batch: TrainBatch, device: torch.device, entropy: str | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs as :func:`token_logprobs`, plus the policy's per-token entropy [B, L] when ``entropy`` is
    "metric" (no gradient) or "grad" (for an entropy bonus). The entropy costs one more [B, L, vocab] tensor
    (the softmax) while it is computed."""
    logits, start = _response_logits(model, batch, device)
    targets = batch.input_ids.to(device)[:, start + 1 :]
    lse = logits.logsumexp(-1)
    picked = logits.gather(-1, targets[..., None])[..., 0] - lse
    ent = None
    if entropy is not None:
        with torch.set_grad_enabled(entropy == "grad" and torch.is_grad_enabled()):
            ent = _on_responses(lse - (logits.softmax(-1) * logits).sum(-1), start, batch, device)
    return _on_responses(picked, start, batch, device), ent
