"""vt_ray: Video-Thinker (SFT + GRPO for Qwen2.5-VL that thinks with videos) on Ray."""

__version__ = "0.1.0"
