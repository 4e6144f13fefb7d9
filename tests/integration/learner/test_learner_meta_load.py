"""learner.load_on_rank0: the policy and reference built on the meta device, sharded, then filled from rank 0's
checkpoint read, are the very models every rank loading the checkpoint gives (weights, buffers, flags, logprobs,
a training step).

Two gloo ranks in processes spawned with torch.multiprocessing (no Ray): each rank sets up learners in both
modes in one process group and saves what it sees; the asserts run here. Two models: the tiny one (untied,
float32) and a tied-embedding copy trained with bfloat16 compute and activation checkpointing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from learner_examples import make_examples  # pytest puts tests/ on sys.path (rootdir conftest)
from vt_ray.config.loader import load_config
from vt_ray.config.roles import LearnerRoleConfig

WORLD = 2
BASE = ["learner.lr=1e-3", "learner.micro_batch_size=3", "learner.reference=sharded", "learner.timeout_s=300"]
# case name -> (model fixture, extra overrides)
CASES = {
    "untied_fp32": ("tiny", []),
    "tied_bf16_ac": ("tied", ["learner.param_dtype=bfloat16", "learner.activation_checkpointing=true"]),
}


@pytest.fixture(scope="module")
def tied_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with tie_word_embeddings=True (lm_head is the embedding; the checkpoint has no lm_head),
    saved in bfloat16 like the released Qwen2.5-VL: rank 0 then reads it in bf16 and the shards widen it."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    out = tmp_path_factory.mktemp("tied") / "model"
    shutil.copytree(tiny_model_dir, out)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.tie_word_embeddings = True
    torch.manual_seed(1)
    model = Qwen2_5_VLForConditionalGeneration(config)
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    model.to(torch.bfloat16).config.dtype = torch.bfloat16
    model.save_pretrained(out)
    from vt_ray.models.hf_load import stored_dtype

    assert stored_dtype(out) == torch.bfloat16
    return out


def checkpoint_tensors(model_dir: Path, keys: list[str]) -> dict[str, torch.Tensor]:
    """The checkpoint file's tensors under the model's state-dict names (transformers 5 nests the text model
    under model.language_model and the vision tower under model.visual; a tied lm_head is the embedding)."""
    from safetensors.torch import load_file

    raw = load_file(model_dir / "model.safetensors")
    out = {}
    for key in keys:
        name = key.replace("model.language_model.", "model.", 1).replace("model.visual.", "visual.", 1)
        if name not in raw and key == "lm_head.weight":
            name = "model.embed_tokens.weight"
        out[key] = raw[name]
    return out


def _flags(worker) -> dict:
    from vt_ray.learner.fsdp import tied_parameter_groups as _tied_parameter_groups

    policy, ref = worker.model, worker.reference
    return {
        "policy_training": policy.training and all(m.training for m in policy.modules()),
        "policy_use_cache": policy.config.use_cache,
        "policy_checkpointing": sorted(
            n for n, m in policy.named_modules() if getattr(m, "gradient_checkpointing", False)
        ),
        "policy_requires_grad": all(p.requires_grad for p in policy.parameters()),
        "policy_dtypes": sorted({str(p.dtype) for p in policy.parameters()}),
        "policy_tied": _tied_parameter_groups(policy),
        "reference_training": any(m.training for m in ref.modules()),
        "reference_requires_grad": any(p.requires_grad for p in ref.parameters()),
        "reference_dtypes": sorted({str(p.dtype) for p in ref.parameters()}),
        "reference_tied": _tied_parameter_groups(ref),
        "devices": sorted({str(t.device) for m in (policy, ref) for t in [*m.parameters(), *m.buffers()]}),
        "rope_index_patched": "get_rope_index" in vars(policy.model) and "get_rope_index" in vars(ref.model),
    }


def _rank_main(rank: int, port: int, cases: dict[str, tuple[str, list[str]]], out_dir: str) -> None:
    """One learner rank (a spawned process): both loading modes for every case, results to rank{rank}.pt."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoProcessor

    from vt_ray.learner.collate import collate
    from vt_ray.learner.worker import LearnerWorker

    torch.set_num_threads(1)
    results: dict[str, dict] = {}
    for name, (model_dir, extra) in cases.items():
        processor = AutoProcessor.from_pretrained(model_dir)
        batch = collate(processor, make_examples(processor, 3, seed=2))
        for on_rank0 in (True, False):
            cfg = load_config(None, [f"model.path={model_dir}", *BASE, *extra, f"learner.load_on_rank0={on_rank0}"])
            worker = LearnerWorker(LearnerRoleConfig.of(cfg), rank, WORLD)
            worker.setup("127.0.0.1", port, total_steps=2)
            full = StateDictOptions(full_state_dict=True, cpu_offload=True)
            r = {
                "policy_sd": get_model_state_dict(worker.model, options=full),  # rank 0 only
                "reference_sd": get_model_state_dict(worker.reference, options=full),
                "policy_buffers": {k: v.clone() for k, v in worker.model.named_buffers()},
                "reference_buffers": {k: v.clone() for k, v in worker.reference.named_buffers()},
                "flags": _flags(worker),
                "policy_lp": worker.compute_logprobs(batch, num_micro=1, which="policy"),
                "reference_lp": worker.compute_logprobs(batch, num_micro=1, which="reference"),
            }
            metrics = worker.train_step(batch, num_micro=1, loss_name="sft")
            r["metrics"] = {k: v for k, v in metrics.items() if k != "step_time_s"}
            r["trained"] = worker.export_state_dict()
            r["trained_lp"] = worker.compute_logprobs(batch, num_micro=1, which="policy")
            results[f"{name}/{on_rank0}"] = r
            del worker
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tied_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    import torch.multiprocessing as mp

    from vt_ray.learner.rendezvous import free_port

    dirs = {"tiny": str(tiny_model_dir), "tied": str(tied_model_dir)}
    cases = {name: (dirs[model], extra) for name, (model, extra) in CASES.items()}
    out = tmp_path_factory.mktemp("meta_load")
    mp.spawn(_rank_main, args=(free_port(), cases, str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _plain(model_dir: Path, dtype: torch.dtype):
    from vt_ray.models.hf_load import load_vl_model

    return load_vl_model(str(model_dir), dtype)


def _model_dir(case: str, tiny: Path, tied: Path) -> Path:
    return {"tiny": tiny, "tied": tied}[CASES[case][0]]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_sharded_weights_are_the_checkpoint_and_buffers_the_plain_models(
    runs, case: str, tiny_model_dir: Path, tied_model_dir: Path
) -> None:
    model_dir = _model_dir(case, tiny_model_dir, tied_model_dir)
    meta = [runs[r][f"{case}/True"] for r in range(WORLD)]
    ref_dtype = meta[0]["flags"]["reference_dtypes"]
    param_dtype = torch.bfloat16 if ref_dtype == ["torch.bfloat16"] else torch.float32
    policy_sd, reference_sd = meta[0]["policy_sd"], meta[0]["reference_sd"]

    plain_policy, plain_reference = _plain(model_dir, torch.float32), _plain(model_dir, param_dtype)
    assert list(policy_sd) == list(plain_policy.state_dict()) == list(reference_sd)
    ckpt = checkpoint_tensors(model_dir, list(policy_sd))
    for key, value in policy_sd.items():
        assert value.dtype == torch.float32 and torch.equal(value, ckpt[key].to(torch.float32)), key
        assert reference_sd[key].dtype == param_dtype and torch.equal(reference_sd[key], ckpt[key].to(param_dtype)), key
    if case.startswith("tied"):
        assert torch.equal(policy_sd["lm_head.weight"], policy_sd["model.language_model.embed_tokens.weight"])

    # Every buffer, on every rank: the non-persistent rotary inv_freq are not in any state dict.
    for name, plain in (("policy", plain_policy), ("reference", plain_reference)):
        expected = dict(plain.named_buffers())
        assert any(k.endswith("rotary_emb.inv_freq") for k in expected)
        assert any(k.endswith("rotary_pos_emb.inv_freq") for k in expected)
        assert not set(expected) & set(plain.state_dict())  # they are all non-persistent here
        for rank in range(WORLD):
            got = meta[rank][f"{name}_buffers"]
            assert list(got) == list(expected)
            for key, value in expected.items():
                assert got[key].dtype == value.dtype and torch.equal(got[key], value), (rank, name, key)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_both_loading_modes_give_the_same_learner(runs, case: str) -> None:
    for rank in range(WORLD):
        meta, plain = runs[rank][f"{case}/True"], runs[rank][f"{case}/False"]
        assert meta["flags"] == plain["flags"]
        # Same weights, buffers and flags, so the same computation: bit-identical on CPU, not merely close.
        for key in ("policy_lp", "reference_lp", "trained_lp"):
            torch.testing.assert_close(meta[key], plain[key], atol=0, rtol=0, msg=f"rank {rank} {key}")
        assert meta["metrics"] == plain["metrics"]
        assert list(meta["trained"]) == list(plain["trained"])  # empty on rank 1
        for key, value in plain["trained"].items():
            torch.testing.assert_close(meta["trained"][key], value, atol=0, rtol=0, msg=key)

    flags = runs[0][f"{case}/True"]["flags"]
    assert flags["policy_training"] and flags["policy_use_cache"] is False and flags["policy_requires_grad"]
    assert flags["policy_dtypes"] == ["torch.float32"]  # master weights
    assert not flags["reference_training"] and not flags["reference_requires_grad"]
    assert flags["devices"] == ["cpu"] and flags["rope_index_patched"]
    tied = [["lm_head.weight", "model.language_model.embed_tokens.weight"]]
    if case == "tied_bf16_ac":
        assert flags["policy_tied"] == flags["reference_tied"] == tied
        assert flags["reference_dtypes"] == ["torch.bfloat16"]
        assert {"model.language_model", "model.visual"} <= set(flags["policy_checkpointing"])
    else:
        assert flags["policy_tied"] == flags["reference_tied"] == []
        assert flags["policy_checkpointing"] == []
    assert runs[0][f"{case}/True"]["metrics"]["loss"] > 0


def test_meta_model_matches_the_loaded_one_without_storage(tied_model_dir: Path) -> None:
    from transformers import AutoConfig

    from vt_ray.models.hf_load import build_vl_model_on_meta

    loaded = _plain(tied_model_dir, torch.bfloat16)
    config = AutoConfig.from_pretrained(tied_model_dir)
    before = config.to_dict()
    for source in (str(tied_model_dir), config):
        meta = build_vl_model_on_meta(source, torch.bfloat16)
        assert type(meta) is type(loaded) and not meta.training
        assert meta.config._attn_implementation == loaded.config._attn_implementation
        assert "get_rope_index" in vars(meta.model)  # use_released_rope_index applied
        assert meta.lm_head.weight is meta.model.language_model.embed_tokens.weight
        tensors = {**dict(meta.named_parameters()), **dict(meta.named_buffers())}
        expected = {**dict(loaded.named_parameters()), **dict(loaded.named_buffers())}
        assert list(tensors) == list(expected)
        assert all(t.is_meta for t in tensors.values())
        assert all(t.shape == expected[k].shape and t.dtype == expected[k].dtype for k, t in tensors.items())
    assert config.to_dict() == before  # the caller's config is not modified


def test_load_on_rank0_is_a_learner_option() -> None:
    assert load_config(None, []).learner.load_on_rank0 is True
    assert load_config(None, ["learner.load_on_rank0=false"]).learner.load_on_rank0 is False
