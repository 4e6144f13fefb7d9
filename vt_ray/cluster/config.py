"""Resources / placement section of the recipe (filled in by the cluster stage)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ResourcesConfig:
    """Placeholder until placement lands."""
