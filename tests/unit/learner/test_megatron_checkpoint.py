"""The Megatron learner's checkpoint side files (vt_ray/learner/megatron/checkpoint.py): the AdamW step counters
are keyed by each parameter's global checkpoint key and merged over every rank's file, so a rank of another
layout (TP/PP) finds the counter of every parameter it holds. The resharding itself (dist_checkpointing, two
gloo ranks) is tests/integration/learner/test_megatron_lm.py::test_checkpoint_reshards_model_and_adamw_state."""

from __future__ import annotations

import json
from pathlib import Path

from vt_ray.learner.megatron.checkpoint import OPTIM_COMMON, _saved_steps

GROUPS = [{"lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 0.0}]


def _write(found: Path, rank: int, steps: dict[str, float]) -> None:
    (found / OPTIM_COMMON.format(rank=rank)).write_text(json.dumps({"steps": steps, "param_groups": GROUPS}))


def test_step_counters_of_every_stage_are_merged(tmp_path: Path) -> None:
    """Saved at two pipeline stages (each rank holds its own layers), read at one: every key is found."""
    _write(tmp_path, 0, {"lm.embedding.word_embeddings.weight": 3.0, "lm.decoder.layers.0.mlp.weight": 3.0})
    _write(tmp_path, 1, {"lm.decoder.layers.1.mlp.weight": 2.0, "lm.output_layer.weight": 3.0})
    steps, groups = _saved_steps(tmp_path)
    assert steps == {"lm.embedding.word_embeddings.weight": 3.0, "lm.decoder.layers.0.mlp.weight": 3.0,
                     "lm.decoder.layers.1.mlp.weight": 2.0, "lm.output_layer.weight": 3.0}
    assert groups == GROUPS


def test_no_side_files_means_no_counters(tmp_path: Path) -> None:
    assert _saved_steps(tmp_path) == ({}, [])


def test_the_distributed_optimizers_writer_is_the_main_replica_of_its_piece() -> None:
    """With the distributed optimizer one data-parallel replica writes each parameter's state: its replica id's
    data-parallel index (the last) becomes 0, the TP/PP ones stay (a TP-replicated tensor is still written by TP
    rank 0 only)."""
    import torch
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, is_main_replica

    from vt_ray.learner.megatron.checkpoint import _written_here

    replicated = ShardedTensor.from_rank_offsets("norm", torch.zeros(4), replica_id=(0, 1, 1))
    written = _written_here(replicated)
    assert written.replica_id == (0, 1, 0) and not is_main_replica(written.replica_id)
    split = ShardedTensor.from_rank_offsets("qkv", torch.zeros(4), (0, 1, 2), replica_id=(0, 0, 3))
    assert not is_main_replica(split.replica_id) and is_main_replica(_written_here(split).replica_id)
    assert _written_here(split).global_shape == (8,)
