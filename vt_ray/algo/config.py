"""Algorithm (GRPO) section of the recipe: advantages, clipped surrogate, KL to the reference, entropy.

From the paper: GRPO with group-standardised advantages, no critic, KL penalty to the frozen reference (the
SFT model) with coefficient 0.04. Not stated by the paper, so assumptions here: the KL estimator (k3, the
GRPO/DeepSeekMath choice), the clip ratios (0.2/0.2, PPO's default), token-mean aggregation, Bessel-corrected
group std, eps, and no entropy bonus, dual clip or group filtering.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from vt_ray.algo import registry
from vt_ray.common.choices import set_choice
from vt_ray.common.errors import check

ADV_ESTIMATORS = registry.ADV_ESTIMATORS.builtin  # the registries' built-in names (vt_ray.algo.registry)
LOSS_AGG_MODES = registry.LOSS_AGG_MODES.builtin
KL_ESTIMATORS = registry.KL_ESTIMATORS.builtin
POLICY_LOSSES = registry.POLICY_LOSSES.builtin
SEQUENCE_LEVEL_LOSSES = ("gspo", "gspo_token")  # GSPO defines its objective per sequence (seq-mean-token-mean)


class TgrpoRule(StrEnum):
    paper = "paper"
    code = "code"


class BehaviourLogprobs(StrEnum):
    auto = "auto"
    recompute = "recompute"
    engine = "engine"


TGRPO_RULES = tuple(TgrpoRule)
BEHAVIOUR_LOGPROBS = tuple(BehaviourLogprobs)
STALE_TIS_CAP = 2.0
"""``algorithm.tis_cap`` when unset in the overlapped trainer modes (verl's rollout-correction threshold)."""


@dataclass(frozen=True)
class AlgorithmConfig:
    adv_estimator: str = "grpo"
    """Registered name or ``package.module:function`` (docs/algorithms.md). grpo: (r - mean(group)) / std (paper)
    | dr_grpo: r - mean(group) | rloo: r - mean(rest of the group) | reinforce_plus_plus: batch-whitened r |
    reinforce_plus_plus_baseline: r - mean(group), batch-whitened."""
    policy_loss: str = "vanilla"
    """Registered name or ``package.module:function``. vanilla: PPO clipped surrogate (paper GRPO) | gspo:
    sequence-level ratio and clip (GSPO) | gspo_token: GSPO-token | cispo: clipped IS weight, stop-gradient."""
    norm_by_std: bool = True
    """Divide advantages by the group std + eps (paper GRPO). False with grpo is Dr. GRPO's advantage."""
    eps: float = 1e-6
    """Added to the group std before dividing (assumption)."""
    filter_zero_variance_groups: bool = False
    """Mask out groups whose rewards are all equal (DAPO dynamic sampling): they carry no advantage signal but
    still count in the token-mean denominator. Off in the paper (assumption)."""
    clip_ratio_low: float = 0.2
    """Lower clip: ratio >= 1 - clip_ratio_low (assumption: PPO's 0.2)."""
    clip_ratio_high: float = 0.2
    """Upper clip: ratio <= 1 + clip_ratio_high (assumption; DAPO's clip-higher uses 0.28)."""
    dual_clip_c: float = 0.0
    """Dual clip: for negative advantages the loss is capped at -A * c (c > 1, e.g. 3). 0 = off."""
    loss_agg_mode: str = "token-mean"
    """token-mean (every response token weighs the same) | seq-mean-token-sum | seq-mean-token-mean
    (original GRPO: mean per response, then over responses) | seq-mean-token-sum-norm (Dr. GRPO: token sum per
    response / ``loss_scale_factor``, mean over responses) | ``package.module:function`` (assumption: token-mean)."""
    loss_scale_factor: int = 0
    """The constant normaliser of seq-mean-token-sum-norm (Dr. GRPO); 0 = rollout.max_tokens."""
    seq_clip_ratio_low: float = 3e-4
    """GSPO's own sequence-level clip range, lower side (GSPO paper v2, section 5.1: 3e-4)."""
    seq_clip_ratio_high: float = 4e-4
    """GSPO's sequence-level clip range, upper side (GSPO paper v2, section 5.1: 4e-4)."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: keep only groups whose rewards are not all equal, and refill the batch with
    groups from further prompts (at most ``max_refill_rounds`` more rollout rounds per step)."""
    max_refill_rounds: int = 3
    """Extra rollout rounds per step that dynamic sampling may spend refilling (must be >= 1 when on)."""
    oversample_factor: float = 1.0
    """Dynamic sampling draws ceil(factor x missing groups) prompts per round (DAPO over-samples, e.g. 3)."""
    overlong_filter: bool = False
    """DAPO overlong filtering: responses cut at rollout.max_tokens are masked out of the loss."""
    overlong_buffer_len: int = 0
    """DAPO soft overlong punishment: over the last L_cache tokens before rollout.max_tokens the score falls
    linearly to -overlong_penalty_factor (DAPO eq. 13; 0 = off; the paper: 4096 of 20480)."""
    overlong_penalty_factor: float = 1.0
    """Size of the soft overlong punishment at rollout.max_tokens (DAPO: 1)."""
    tgrpo: bool = False
    """T-GRPO (Video-R1, arXiv 2503.21776, section 3.2): also sample ``tgrpo_shuffled_n`` responses per prompt
    from the same decoded frames in a shuffled order (no gradient step on them); when the ordered group's
    accuracy p beats the shuffled group's p~ by ``tgrpo_rule``, add ``tgrpo_alpha`` to each correct ordered
    response."""
    tgrpo_alpha: float = 0.3
    """The temporal reward alpha (paper: 0.3)."""
    tgrpo_rule: TgrpoRule = TgrpoRule.paper
    """paper: bonus when p > p~ (Eq. 1) | code: when p >= 0.8 p~ (Video-R1's released trainer)."""
    tgrpo_shuffled_n: int = 0
    """Shuffled responses per prompt; 0 = rollout.n (the paper's two groups of G; the released code uses G/2)."""
    option_rotations: int = 1
    """Option-rotation groups for multiple-choice prompts: each prompt is rolled out under this many rotations
    of its options (``rollout.n`` / k responses each; k = the number of options puts the gold answer under every
    letter once), and the advantage baseline is taken over all of them together. A policy that favours a letter
    whatever the options say then scores the group mean on average, so the accuracy reward gives its letter
    preference no net push (a letter-agnostic term such as the format reward still rewards whichever letter is
    written: measured, it can settle a policy whose answers start out of format on one letter). Why: with one
    option order per group, a letter the policy already favours is rewarded in the groups where it happens to be
    gold, while most groups where it is wrong have no correct sample and so no signal to push it down; GRPO
    drifts into option-position habits (measured in docs/learning.md). 1 = off (one option order per group, the
    paper)."""
    use_kl_loss: bool = True
    """KL to the reference as a loss term with ``kl_coef`` (paper: a KL penalty, coefficient 0.04)."""
    use_kl_in_reward: bool = False
    """Instead, subtract ``kl_coef`` * sum_t KL_t from each response's score before the advantages."""
    kl_coef: float = 0.04
    """KL coefficient (paper: 0.04). 0 disables KL and the reference model."""
    kl_estimator: str = "k3"
    """k1: log p/q | k2: (log p/q)^2 / 2 | k3: q/p - log q/p - 1 (non-negative, low variance; assumption) |
    ``package.module:function``."""
    entropy_coef: float = 0.0
    """Entropy bonus: loss -= entropy_coef * entropy (0 = off)."""
    behaviour_logprobs: BehaviourLogprobs = BehaviourLogprobs.auto
    """Which log-probs stand for the behaviour (old) policy in the ratio. recompute: the learner recomputes
    them before every step's update (one no-grad forward pass over the batch). engine: the rollout engine's
    sampling log-probs (no extra pass; the ratio then also carries the engine/learner numerical mismatch).
    auto: recompute when a step makes more than one update (update_epochs > 1 or several mini-batches), else
    on-policy (ratio 1, the learner's own log-probs, free)."""
    tis_cap: float | None = None
    """Truncated importance sampling of the engine/learner mismatch: each token's loss is weighted by
    min(pi_learner_old / pi_engine, tis_cap) (Yao et al. 2025, "Your efficient RL framework secretly brings you
    off-policy RL training"; verl's rollout correction, threshold 2.0). 0 = off. Not with ``engine``.
    Unset (null): off in ``trainer.mode: sync``; ``STALE_TIS_CAP`` in the overlapped modes, whose samples come
    from an older policy than the one being updated: there the weight is what corrects for the staleness
    (with one update per step the ratio itself is 1), AReaL's decoupled objective."""
    log_logprob_mismatch: bool = True
    """Log the engine-vs-learner log-prob mismatch every step (rollout/engine_learner_*: mean and max |diff|,
    k3 KL per token). Free when the step makes one update or recomputes old log-probs; with ``engine`` and
    several updates per step it costs one no-grad forward pass."""
    log_entropy: bool = True
    """Log the policy's token entropy (actor/entropy) during updates; costs one softmax over the vocabulary
    per micro-batch, without gradient."""

    def __post_init__(self) -> None:
        registry.ADV_ESTIMATORS.check(self.adv_estimator)
        registry.POLICY_LOSSES.check(self.policy_loss)
        registry.LOSS_AGG_MODES.check(self.loss_agg_mode)
        registry.KL_ESTIMATORS.check(self.kl_estimator)
        check(self.eps > 0, "algorithm.eps", "must be > 0")
        check(0 <= self.clip_ratio_low < 1, "algorithm.clip_ratio_low", "must be in [0, 1)")
        check(self.clip_ratio_high >= 0, "algorithm.clip_ratio_high", "must be >= 0")
        check(self.dual_clip_c == 0 or self.dual_clip_c > 1, "algorithm.dual_clip_c", "must be 0 (off) or > 1")
        check(
            self.policy_loss not in SEQUENCE_LEVEL_LOSSES or self.loss_agg_mode == "seq-mean-token-mean",
            "algorithm.loss_agg_mode",
            f"{self.policy_loss} is defined with seq-mean-token-mean (GSPO paper eq. 5/7); got {self.loss_agg_mode!r}",
        )
        check(self.loss_scale_factor >= 0, "algorithm.loss_scale_factor", "must be >= 0 (0 = rollout.max_tokens)")
        check(0 <= self.seq_clip_ratio_low < 1, "algorithm.seq_clip_ratio_low", "must be in [0, 1)")
        check(self.seq_clip_ratio_high >= 0, "algorithm.seq_clip_ratio_high", "must be >= 0")
        check(not self.dynamic_sampling or self.max_refill_rounds >= 1, "algorithm.max_refill_rounds",
              "dynamic sampling needs at least 1 refill round")
        check(self.max_refill_rounds >= 0, "algorithm.max_refill_rounds", "must be >= 0")
        check(self.oversample_factor >= 1, "algorithm.oversample_factor", "must be >= 1")
        check(self.overlong_buffer_len >= 0, "algorithm.overlong_buffer_len", "must be >= 0 (0 = off)")
        check(self.overlong_penalty_factor >= 0, "algorithm.overlong_penalty_factor", "must be >= 0")
        check(self.tgrpo_alpha >= 0, "algorithm.tgrpo_alpha", "must be >= 0")
        set_choice(self, "tgrpo_rule", TgrpoRule, "algorithm.tgrpo_rule")
        check(self.tgrpo_shuffled_n >= 0, "algorithm.tgrpo_shuffled_n", "must be >= 0 (0 = rollout.n)")
        check(self.option_rotations >= 1, "algorithm.option_rotations", "must be >= 1 (1 = off)")
        check(self.kl_coef >= 0, "algorithm.kl_coef", "must be >= 0")
        check(
            not (self.use_kl_loss and self.use_kl_in_reward),
            "algorithm.use_kl_in_reward",
            "KL is either a loss term (use_kl_loss) or a reward penalty, not both",
        )
        check(self.entropy_coef >= 0, "algorithm.entropy_coef", "must be >= 0")
        set_choice(self, "behaviour_logprobs", BehaviourLogprobs, "algorithm.behaviour_logprobs")
        check(self.tis_cap is None or self.tis_cap == 0 or self.tis_cap >= 1, "algorithm.tis_cap",
              "must be 0 (off) or >= 1 (e.g. 2)")
        check(not (self.truncated_is_cap > 0 and self.behaviour_logprobs == "engine"), "algorithm.tis_cap",
              "truncated IS corrects learner-old vs engine log-probs; with behaviour_logprobs=engine there is no "
              "learner-old policy (use recompute or auto)")

    @property
    def truncated_is_cap(self) -> float:
        """``tis_cap`` as a number (unset counts as off: a recipe resolves it from ``trainer.mode``)."""
        return self.tis_cap or 0.0

    def recompute_old_logprobs(self, updates_per_step: int) -> bool:
        """Whether the learner recomputes old log-probs before the update (see ``behaviour_logprobs``)."""
        return self.behaviour_logprobs == "recompute" or (self.behaviour_logprobs == "auto" and updates_per_step > 1)

    def policy_logprob_pass(self, updates_per_step: int) -> bool:
        """Whether the driver asks the learner for a no-grad policy log-prob pass before the update: to recompute
        old log-probs, or (``engine`` with several updates and the mismatch metric on) for the metric alone. With
        one update per step the update's own forward is the pre-update policy: the loss measures it for free."""
        return self.recompute_old_logprobs(updates_per_step) or (
            self.behaviour_logprobs == "engine" and self.log_logprob_mismatch and updates_per_step > 1
        )

    @property
    def needs_reference(self) -> bool:
        """Whether the learner must keep a frozen reference model for log-probs."""
        return self.kl_coef > 0 and (self.use_kl_loss or self.use_kl_in_reward)
