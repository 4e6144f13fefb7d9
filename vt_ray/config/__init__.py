"""Typed recipes: schema (dataclasses), strict loader, errors naming the key.

The section configs of the roles above (``resources``, ``learner``, ``trainer``, ``eval``) live here; the
algorithm's and the rewards' own sections live in their packages, below this one (``vt_ray.algo.config``,
``vt_ray.rewards.config``). Exports resolve lazily, so importing one section does not load the whole schema.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConfigError": "vt_ray.common.errors",
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
