"""``learner.megatron``: a parallel layout that cannot split the model fails when the recipe loads, naming the
key (issue 20). The tiny model has 4 attention heads, 2 KV heads, 2 layers and a 1152-token vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vt_ray.config.loader import load_config
from vt_ray.config.schema import ConfigError


def _load(model: Path | str, *overrides: str):
    return load_config(None, [f"model.path={model}", "resources.learner.num_workers=2", *overrides])


def test_layouts_that_split_the_model_load(tiny_model_dir: Path) -> None:
    cfg = _load(tiny_model_dir, "learner.megatron.tensor_parallel_size=2")
    assert (cfg.learner.megatron.tensor_parallel_size, cfg.learner.megatron.pipeline_parallel_size) == (2, 1)
    assert cfg.learner.megatron.transformer_impl == "auto"
    assert cfg.learner.megatron.sequence_parallel is False
    cfg = _load(tiny_model_dir, "learner.megatron.tensor_parallel_size=2", "learner.megatron.sequence_parallel=true")
    assert cfg.learner.megatron.sequence_parallel is True
    cfg = _load(tiny_model_dir, "learner.megatron.pipeline_parallel_size=2")
    assert cfg.learner.megatron.pipeline_parallel_size == 2
    assert cfg.learner.megatron.context_parallel_size == 1
    cfg = _load(tiny_model_dir, "learner.megatron.context_parallel_size=2")
    assert cfg.learner.megatron.context_parallel_size == 2
    cfg = _load(tiny_model_dir, "learner.activation_checkpointing=true", "learner.megatron.recompute_method=block",
                "learner.megatron.recompute_num_layers=2")
    assert (cfg.learner.megatron.recompute_granularity, cfg.learner.megatron.recompute_num_layers) == ("full", 2)


@pytest.mark.parametrize(("override", "key", "words"), [
    ("learner.megatron.tensor_parallel_size=4", "learner.megatron.tensor_parallel_size", "2 KV heads"),
    ("learner.megatron.tensor_parallel_size=3", "learner.megatron.tensor_parallel_size", "4 attention heads"),
    ("learner.megatron.pipeline_parallel_size=4", "learner.megatron.pipeline_parallel_size", "2 layers"),
    ("learner.megatron.transformer_impl=apex", "learner.megatron.transformer_impl", "'apex'"),
    ("learner.megatron.tensor_parallel_size=0", "learner.megatron.tensor_parallel_size", ">= 1"),
    ("learner.megatron.recompute_granularity=layer", "learner.megatron.recompute_granularity", "'layer'"),
    ("learner.megatron.recompute_method=every", "learner.megatron.recompute_method", "'every'"),
    ("learner.megatron.recompute_num_layers=0", "learner.megatron.recompute_num_layers", ">= 1"),
    ("learner.megatron.vision_impl=timm", "learner.megatron.vision_impl", "'timm'"),
    # context parallelism: TP x CP x PP must divide the learner's 2 ranks
    ("learner.megatron.context_parallel_size=0", "learner.megatron.context_parallel_size", ">= 1"),
    ("learner.megatron.context_parallel_size=4", "learner.megatron.context_parallel_size",
     "context_parallel_size x pipeline_parallel_size = 4 does not divide the 2 learner ranks"),
    ("learner.megatron.context_parallel_size=2 learner.megatron.tensor_parallel_size=2",
     "learner.megatron.context_parallel_size", "= 4 does not divide the 2"),
    # sequence parallelism splits the sequence over the TP group: nothing to split it over at TP 1
    ("learner.megatron.sequence_parallel=true", "learner.megatron.sequence_parallel", "tensor_parallel_size > 1"),
    # uniform units must tile each stage's layers (2 layers here); block may not ask for more than there are
    ("learner.megatron.recompute_num_layers=3", "learner.megatron.recompute_num_layers", "does not divide the 2"),
    ("learner.megatron.recompute_method=block learner.megatron.recompute_num_layers=2 "
     "learner.megatron.pipeline_parallel_size=2", "learner.megatron.recompute_num_layers", "more than the 1 layers"),
])
def test_a_layout_that_cannot_split_the_model_names_the_key(tiny_model_dir: Path, override: str, key: str,
                                                            words: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tiny_model_dir, *override.split())
    assert err.value.key == key
    assert words in str(err.value)


def test_vocabulary_must_split_too(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    # 4 heads and 4 KV heads split 4 ways; a 1150-token vocabulary splits 2 ways, not 4.
    config["text_config"].update(vocab_size=1150, num_attention_heads=4, num_key_value_heads=4)
    (tmp_path / "config.json").write_text(json.dumps(config))
    _load(tmp_path, "learner.megatron.tensor_parallel_size=2")
    with pytest.raises(ConfigError, match="1150 vocabulary size") as err:
        _load(tmp_path, "learner.megatron.tensor_parallel_size=4")
    assert err.value.key == "learner.megatron.tensor_parallel_size"


def test_the_layout_must_divide_the_learner_ranks(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="does not divide the 1 learner ranks") as err:
        load_config(None, [f"model.path={tiny_model_dir}", "learner.megatron.tensor_parallel_size=2"])
    assert err.value.key == "learner.megatron.tensor_parallel_size"


def test_pipeline_stages_run_tied_embeddings(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The first stage's embedding and the last stage's output layer are one tensor: the last stage keeps
    megatron's copy (vt_ray/learner/megatron/optim.py finalize_grads keeps the two equal), so the layout loads."""
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (tmp_path / "config.json").write_text(json.dumps(config))
    cfg = _load(tmp_path, "learner.megatron.pipeline_parallel_size=2")
    assert cfg.learner.megatron.pipeline_parallel_size == 2


def test_a_megatron_vision_tower_must_split_too(tmp_path: Path, tiny_model_dir: Path) -> None:
    """With vision_impl megatron, TP splits the vision tower: it must divide its heads (2 here) and MLP width;
    the HF tower (the default) is kept whole, so the same layout loads with it."""
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["text_config"].update(num_attention_heads=4, num_key_value_heads=4)  # the language model splits 4 ways
    (tmp_path / "config.json").write_text(json.dumps(config))
    four = ("learner.megatron.tensor_parallel_size=4", "resources.learner.num_workers=4",
            "resources.learner.cpus_per_worker=0.5")
    cfg = _load(tmp_path, *four)
    assert cfg.learner.megatron.vision_impl == "hf"
    assert _load(tmp_path, "learner.megatron.tensor_parallel_size=2",
                 "learner.megatron.vision_impl=megatron").learner.megatron.vision_impl == "megatron"
    with pytest.raises(ConfigError, match="vision tower's 2 attention heads") as err:
        _load(tmp_path, *four, "learner.megatron.vision_impl=megatron")
    assert err.value.key == "learner.megatron.tensor_parallel_size"


def test_the_distributed_optimizer_is_a_megatron_switch(tiny_model_dir: Path) -> None:
    """``learner.megatron.distributed_optimizer`` (vt_ray/learner/megatron/dist_optim.py): off by default, a bool,
    and only for the Megatron backend (FSDP2 shards its optimizer state already): the recipe fails when it loads,
    naming the key."""
    assert _load(tiny_model_dir).learner.megatron.distributed_optimizer is False
    on = _load(tiny_model_dir, "learner.backend=megatron", "learner.megatron.distributed_optimizer=true")
    assert on.learner.megatron.distributed_optimizer is True
    with pytest.raises(ConfigError, match="'fsdp2'") as err:
        _load(tiny_model_dir, "learner.megatron.distributed_optimizer=true")
    assert err.value.key == "learner.megatron.distributed_optimizer"
    with pytest.raises(ConfigError) as err:
        _load(tiny_model_dir, "learner.backend=megatron", "learner.megatron.distributed_optimizer=sometimes")
    assert err.value.key == "learner.megatron.distributed_optimizer"


_MEGATRON_OPTIM = ("learner.backend=megatron", "learner.megatron.distributed_optimizer=true",
                   "learner.megatron.vision_impl=megatron", "learner.megatron.optimizer_impl=megatron")
_ON_GPUS = ("resources.gpus_per_node=4", "resources.learner.gpus_per_worker=1", "resources.rollout.gpus_per_worker=1")


def test_megatrons_optimizer_is_opt_in_and_refused_where_it_cannot_run(tiny_model_dir: Path) -> None:
    """``learner.megatron.optimizer_impl: megatron`` (vt_ray/learner/megatron/megatron_optim.py, CUDA only): the
    default is ours; megatron's needs the distributed optimizer, the Megatron vision tower, GPU learner workers and
    not gloo; each refusal names the key when the recipe loads."""
    assert _load(tiny_model_dir).learner.megatron.optimizer_impl == "vt_ray"
    on = _load(tiny_model_dir, *_MEGATRON_OPTIM, *_ON_GPUS, "learner.megatron.overlap_grad_reduce=true")
    assert (on.learner.megatron.optimizer_impl, on.learner.megatron.overlap_grad_reduce) == ("megatron", True)
    for dropped, words in (("learner.megatron.distributed_optimizer=true", "distributed_optimizer=true"),
                           ("learner.megatron.vision_impl=megatron", "vision_impl=megatron")):
        with pytest.raises(ConfigError, match=words) as err:
            _load(tiny_model_dir, *(o for o in _MEGATRON_OPTIM if o != dropped), *_ON_GPUS)
        assert err.value.key == "learner.megatron.optimizer_impl"
    for extra, words in (((), "needs CUDA"), ((*_ON_GPUS, "learner.dist_backend=gloo"), "gloo")):
        with pytest.raises(ConfigError, match=words) as err:
            _load(tiny_model_dir, *_MEGATRON_OPTIM, *extra)
        assert err.value.key == "learner.megatron.optimizer_impl"
    with pytest.raises(ConfigError) as err:
        _load(tiny_model_dir, "learner.backend=megatron", "learner.megatron.overlap_grad_reduce=true")
    assert err.value.key == "learner.megatron.overlap_grad_reduce"
    with pytest.raises(ConfigError) as err:
        _load(tiny_model_dir, "learner.backend=megatron", "learner.megatron.optimizer_impl=apex")
    assert err.value.key == "learner.megatron.optimizer_impl"
