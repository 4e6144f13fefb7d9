"""Evaluation section of the recipe (filled in by the eval stage)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    """Placeholder until the eval harness lands."""
