"""Algorithm (GRPO) section of the recipe (filled in by the algorithm stage)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AlgorithmConfig:
    """Placeholder until the GRPO module lands."""
