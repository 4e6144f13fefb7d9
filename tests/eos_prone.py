"""Weights that make the tiny (random) model end almost every response at once with an EOS token: what an
``ignore_eos`` / ``min_tokens`` test needs to be able to fail (the random model rarely samples EOS on its own)."""

from __future__ import annotations

import torch

EMBED = "model.language_model.embed_tokens.weight"
HEAD = "lm_head.weight"


def eos_prone_state(state: dict[str, torch.Tensor], eos_id: int, dim: int = 0) -> dict[str, torch.Tensor]:
    """``state`` with one hidden dimension made large in every token embedding and read only by the EOS row of
    the output head: after the final RMSNorm that dimension dominates the last hidden state at every text
    position, so EOS's logit is about 20 above any other."""
    state = {k: v.clone() for k, v in state.items()}
    state[EMBED][:, dim] = 30.0
    state[HEAD][:, dim] = 0.0
    state[HEAD][eos_id, dim] = 2.0
    return state
