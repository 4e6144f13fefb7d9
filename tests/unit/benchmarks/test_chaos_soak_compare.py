"""The chaos soak's figure comparison: float noise passes, a real difference does not."""

from benchmarks.chaos_soak import same_figure


def test_float_noise_passes_and_a_real_difference_fails() -> None:
    # measured between two runs of the same command on an AMX/AVX-512 VM (benchmarks/chaos_soak.py docstring)
    assert same_figure("actor/kl_loss", 0.004399963305331767, 0.004399959114380181)
    assert same_figure("rollout/probe_logprob_abs_diff", 4.8e-7, 5.4e-7)
    # a resume that trained other samples moves the loss by percents; the diagnostics by more than 1e-6
    assert not same_figure("actor/loss", 0.0534, 0.0540)
    assert not same_figure("rollout/engine_learner_abs_diff_mean", 2e-7, 3e-6)
    # counts and other non-floats compare exactly
    assert not same_figure("rollout/num_samples", 64, 65)
    assert same_figure("rollout/num_samples", 64, 64)
