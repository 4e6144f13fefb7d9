"""Learner (FSDP2) and SFT sections of the recipe (filled in by the learner stage)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LearnerConfig:
    """Placeholder until the learner lands."""


@dataclass
class SftConfig:
    """Placeholder until the SFT stage lands."""
