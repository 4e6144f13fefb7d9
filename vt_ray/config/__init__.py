"""Typed recipes: schema (dataclasses), strict loader, errors naming the key.

Exports resolve lazily: section configs (``vt_ray.rewards.config`` ...) import ``vt_ray.config.errors``, and an
eager import of the schema here would make importing any of them first a circular import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConfigError": "vt_ray.config.errors",
    "RecipeConfig": "vt_ray.config.schema",
    "load_config": "vt_ray.config.loader",
    "load_from_cli": "vt_ray.config.loader",
    "to_yaml": "vt_ray.config.loader",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vt_ray.config' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
